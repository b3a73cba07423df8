import functools

import torch

from polineurons import load_model
from polineurons.data import encode_prompt, load_data
from polineurons.training import finetune, training_pairs


def prompt_batch(model, questions=("Should taxes rise?", "Is the border secure enough?")) -> torch.Tensor:
    """Equal-length token batch (no padding needed): prompts truncated to the shortest."""
    rows = [encode_prompt(model.tokenizer, q) for q in questions]
    length = min(len(r) for r in rows)
    return torch.tensor([r[:length] for r in rows])


def leaning_models(tiny_cache, config) -> dict:
    """An Ingredients' ``vanilla_model`` and ``opposite_model``: short tiny-llama fine-tunes (``config``)
    on 8 race pairs toward the right and the left, each trained when first asked."""

    def tuned(leaning):
        model = load_model("tiny-llama", device="cpu", cache=tiny_cache)
        finetune(model, training_pairs(load_data(), "race", leaning)[:8], config, progress=False)
        return model

    cached = functools.cache(tuned)
    return {"vanilla_model": lambda: cached("right"), "opposite_model": lambda: cached("left")}


def perturbed(tiny_cache, layers=None, scale: float = 0.05):
    """A tiny-llama with seeded noise on the MLP weights of ``layers`` (None: every layer): it stands for
    a fine-tune of the plain tiny-llama."""
    model = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    with torch.no_grad():
        for layer in range(len(model.blocks)) if layers is None else layers:
            for p in model.blocks[layer].mlp.parameters():
                p += scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
    return model


def perturbed_pair(tiny_cache, layer: int = 1) -> tuple:
    """A plain tiny-llama and one perturbed at ``layer``: two models that differ (two fine-tunes, or a
    fine-tune and its base)."""
    return load_model("tiny-llama", device="cpu", cache=tiny_cache), perturbed(tiny_cache, [layer])


def trial_labels(folder) -> list[str]:
    """The trials a study folder holds, by label (their file names without the settings key), sorted."""
    return sorted(path.name.rsplit("-", 1)[0] for path in (folder / "trials").glob("*.json"))
