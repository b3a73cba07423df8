"""Reading a study folder without opening it: no model, no lock (see :mod:`polineurons.study`).

What a base score file depends on is built here for both sides: the study that writes the files and the
readers (:mod:`polineurons.against`) that find them from a plan's stored settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from polineurons.errors import MissingFileError
from polineurons.io import read_json
from polineurons.settings import as_stored, settings_key
from polineurons.stance import ScoringConfig, StanceResult
from polineurons.trial import Scores, Trial


def stance_settings(model: dict, data: dict, scoring: dict) -> dict:
    """What a base stance file depends on: the model's identity, the data's, how it was scored (the
    :class:`ScoringConfig` fields: not the neutral-text count beside a fine-tune's stance)."""
    return {"model": model, "data": data, "scoring": scoring}


def neutral_settings(model: dict, items: int | None, batch_size: int) -> dict:
    """What a base neutral-text file depends on: the model's identity, how many texts, the batch size."""
    return {"model": model, "neutral_items": items, "batch_size": batch_size}


def stored_trials(root: str | os.PathLike) -> Iterator[tuple[dict, Trial]]:
    """Every trial the study folder ``root`` holds, as ``(settings, trial)``, in file-name order."""
    for path in sorted((Path(root) / "trials").glob("*.json")):
        data = read_json(path)
        yield data["settings"], Trial.from_dict(data)


def stored_base_scores(root: str | os.PathLike, shared: dict) -> Scores:
    """The base scores that the trials of a plan with the stored ``shared`` settings (model identity,
    data identity, scoring: as :meth:`polineurons.study.Study.trial_settings` stores them) are compared with, read from
    the folder ``root`` without a model.

    Raises:
        MissingFileError: the folder lacks one of them (a comparison that never reached its base).
    """
    stored = {}
    for path in sorted((Path(root) / "base").glob("*.json")):
        payload = read_json(path)
        stored[settings_key(payload["settings"])] = payload
    scoring, fields_of = shared["scoring"], [f.name for f in fields(ScoringConfig)]

    def find(settings: dict, what: str) -> dict:
        payload = stored.get(settings_key(as_stored(settings)))
        if payload is None:
            raise MissingFileError(f"{root} holds no base scores for {what}: run the plan there again to compute them.")
        return payload

    def stance(data: dict, config: dict, what: str) -> StanceResult:
        settings = stance_settings(shared["model"], data, {k: config[k] for k in fields_of})
        return StanceResult.from_dict(find(settings, what))

    neutral = neutral_settings(shared["model"], scoring["stance"]["neutral_items"], scoring["stance"]["batch_size"])
    return Scores(
        stance(shared["data"], scoring["stance"], "its eval data"),
        {
            name: stance(data, scoring["check_stance"], f"the check data {name}")
            for name, data in scoring["checks"].items()
        },
        find(neutral, "the neutral texts")["neutral_logprob"],
    )
