import torch

from polineurons.data import encode_prompt


def prompt_batch(model, questions=("Should taxes rise?", "Is the border secure enough?")) -> torch.Tensor:
    """Equal-length token batch (no padding needed): prompts truncated to the shortest."""
    rows = [encode_prompt(model.tokenizer, q) for q in questions]
    length = min(len(r) for r in rows)
    return torch.tensor([r[:length] for r in rows])
