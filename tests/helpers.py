import torch

from polineurons.data import encode_prompt


def prompt_batch(model, questions=("Should taxes rise?", "Is the border secure enough?")) -> torch.Tensor:
    """Equal-length token batch (no padding needed): prompts truncated to the shortest."""
    rows = [encode_prompt(model.tokenizer, q) for q in questions]
    length = min(len(r) for r in rows)
    return torch.tensor([r[:length] for r in rows])


def trial_labels(folder) -> list[str]:
    """The trials a study folder holds, by label (their file names without the settings key), sorted."""
    return sorted(path.name.rsplit("-", 1)[0] for path in (folder / "trials").glob("*.json"))
