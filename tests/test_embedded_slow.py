"""Slow checks on the embedded SmolLM2-135M-Instruct: `pytest -m slow`."""

import os
import subprocess
import sys

import pytest
import torch

from polineurons.data import encode_prompt
from polineurons.hooks import scale_neurons
from polineurons.models import ensure_embedded_cached, load_embedded_from_gguf
from polineurons.neurons import NeuronSet

pytestmark = pytest.mark.slow


def test_cold_conversion_works_offline_in_a_fresh_process(tmp_path):
    code = (
        "import polineurons, torch; m = polineurons.load_model(device='cpu');"
        "print(m.cfg.n_layers, m.cfg.d_mlp, m.cfg.default_prepend_bos)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "POLINEURONS_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["30", "1536", "False"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written folder left


def test_cached_copy_gives_the_gguf_logits_exactly():
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = load_embedded_from_gguf()
    cached = AutoModelForCausalLM.from_pretrained(ensure_embedded_cached(), attn_implementation="eager").eval()
    tokens = torch.tensor([encode_prompt(tokenizer, "Should the minimum wage rise?")])
    with torch.no_grad():
        assert torch.equal(gguf_model(tokens).logits, cached(tokens).logits)


def test_bridge_matches_the_hf_model(embedded_model):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(ensure_embedded_cached(), attn_implementation="eager").eval()
    tokens = torch.tensor([encode_prompt(embedded_model.tokenizer, "Should the minimum wage rise?")])
    with torch.no_grad():
        torch.testing.assert_close(embedded_model(tokens), hf(tokens).logits, rtol=0, atol=1e-4)


def greedy(model, question, kv=True):
    tokens = torch.tensor([encode_prompt(model.tokenizer, question)])
    out = model.generate(tokens, max_new_tokens=16, do_sample=False, use_past_kv_cache=kv, verbose=False)
    return model.tokenizer.decode(out[0, tokens.shape[1] :])


def test_generation_with_and_without_kv_cache_and_hooks(embedded_model):
    model = embedded_model
    question = "What is the capital of France?"
    with_cache, without_cache = greedy(model, question, True), greedy(model, question, False)
    assert "Paris" in with_cache and with_cache == without_cache
    everything = NeuronSet.for_model(model, full=True)
    with scale_neurons(model, everything, 1.0):
        assert greedy(model, question) == with_cache  # an identity hook is invisible
    late_layers = NeuronSet.from_indices({layer: range(1536) for layer in range(20, 30)}, 30, 1536)
    with scale_neurons(model, late_layers, 0.0):
        assert greedy(model, question) != with_cache  # hooks act during generation
    assert greedy(model, question) == with_cache  # and are gone afterwards


def test_default_localizer_finds_a_small_general_set_that_differs_by_topic(embedded_model):
    """The shipped localizer on the embedded model (base model only): general set ≤ 5% of all neurons,
    topics' top sets overlapping < 0.5, and controls that can be drawn disjoint from it."""
    from polineurons.data import load_data
    from polineurons.patching import disjoint_controls
    from polineurons.pnlac import LocalizeConfig, localize

    located = localize(embedded_model, None, load_data(), LocalizeConfig(max_items=8), progress=False)
    summary = located.summary()
    assert 0 < summary["general"]["fraction"] <= 0.05 and summary["pairwise_jaccard"]["mean"] < 0.5
    assert sum(summary["general"]["layer_counts"][:20]) > 0  # not only the last layers
    assert all(len(c & located.general) == 0 for c in disjoint_controls(located.general, 3))
