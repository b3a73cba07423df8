"""The one default-run check on the real embedded model: it loads offline, runs with a hook, and
generates a correct greedy answer with the KV cache (transformers 5.24 broke that)."""

import torch

from polineurons.data import encode_prompt
from polineurons.hooks import record_neurons


def test_embedded_model_offline_forward_with_hook(embedded_model):
    model = embedded_model
    assert (model.cfg.n_layers, model.cfg.d_mlp) == (30, 1536)
    tokens = torch.tensor([encode_prompt(model.tokenizer, "Hi")])
    bos = model.tokenizer.bos_token_id  # <|im_start|>, placed by the chat template itself
    assert tokens[0, 0] == bos and tokens[0, 1] != bos
    with torch.no_grad(), record_neurons(model, [0, 29]) as acts:
        logits = model(tokens)
    assert torch.isfinite(logits).all()
    assert acts[29].shape == (1, tokens.shape[1], 1536)


def test_embedded_greedy_answer_with_kv_cache(embedded_model):
    model = embedded_model
    tokens = torch.tensor([encode_prompt(model.tokenizer, "What is the capital of France?")])
    out = model.generate(tokens, max_new_tokens=12, do_sample=False, use_past_kv_cache=True, verbose=False)
    answer = model.tokenizer.decode(out[0, tokens.shape[1] :])
    assert "Paris" in answer, answer
