"""A mitigation folder's frontier read against another folder's vanilla fine-tune: CTG reduction at a
matched target shift, not only at matched training steps.

Ablating the leaning direction slows how fast the target moves. Trained longer, such a mitigation may
reach the target shift that a shorter vanilla fine-tune gives with far less spill-over — a different
question from "at the same steps", and the one a practitioner with a target size in mind asks. Reading
a longer folder's trials (its methods, strengths and controls) against the vanilla runs of a reference
folder (same model, data, target, leaning and scoring; only the training differs) answers it, at the
price of the extra steps. Nothing is trained: trials, base scores and settings are read from the folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from polineurons.errors import MissingFileError, UserError
from polineurons.frontier import KEPT, Arm, compare_runs, flat_estimates, summarize
from polineurons.io import read_json
from polineurons.mitigate import comparison_arms, methods_of
from polineurons.settings import changed_settings, describe_changes
from polineurons.stored import stored_base_scores, stored_trials
from polineurons.trial import Scores, Trial


@dataclass(frozen=True)
class StoredComparison:
    """A mitigation comparison as its folder stores it (read without a model or the folder's lock)."""

    folder: Path
    shared: dict  # what its trials share, as stored (study.json's "mitigate" plan)
    methods: dict[str, dict]  # each method's own settings
    base: Scores
    arms: list[tuple[Arm, Trial]]

    @classmethod
    def read(cls, folder: str | Path) -> StoredComparison:
        """The comparison in ``folder``.

        Raises:
            MissingFileError: the folder holds no mitigation comparison (or lacks its base scores).
        """
        folder = Path(folder)
        study = folder / "study.json"
        plans = read_json(study)["plans"] if study.is_file() else {}
        if "mitigate" not in plans:
            raise MissingFileError(
                f"{folder} holds no mitigation comparison: run `polineurons mitigate --out {folder}`."
            )
        shared = plans["mitigate"]
        methods = methods_of(plans)
        arms = comparison_arms(stored_trials(folder), shared, methods)
        return cls(folder, shared, methods, stored_base_scores(folder, shared), arms)

    def vanilla(self) -> dict[int, Trial]:
        """Its vanilla fine-tunes by seed."""
        return {arm.seed: trial for arm, trial in self.arms if arm.method == "vanilla"}


def frontier_against(folder: str | Path, reference: str | Path | StoredComparison, *, n_boot: int = 2000) -> dict:
    """``folder``'s mitigation summary (the numbers of its ``mitigation.json``, see
    :func:`polineurons.frontier.summarize`) with ``reference``'s vanilla runs as the vanilla, on the
    seeds both hold (``reference``: its folder, or the comparison already read from it): every target
    kept and CTG reduction is relative to the reference's fine-tune.
    ``folder_vanilla`` is the folder's own vanilla read the same way (its target kept shows how much
    further the longer training moved the target); ``finetune`` and ``reference_finetune`` say how
    each was trained.

    Raises:
        UserError: the folders differ in more than their training (model, data, target, leaning or
            scoring), or share no vanilla seed.
        MissingFileError: either folder holds no mitigation comparison.

    Example::

        result = frontier_against("runs/long", "runs/quick")
        print(result["folder_vanilla"]["target_kept"], result["at_90"]["caft"])
    """
    own = StoredComparison.read(folder)
    ref = reference if isinstance(reference, StoredComparison) else StoredComparison.read(reference)
    changes = [c for c in changed_settings(ref.shared, own.shared) if not c[0].startswith("finetune.")]
    if changes:
        raise UserError(
            f"{own.folder} and {ref.folder} differ in more than their training: {describe_changes(changes)}."
        )
    mine, theirs = own.vanilla(), ref.vanilla()
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        raise UserError(
            f"{own.folder} (vanilla seeds {sorted(mine)}) and {ref.folder} (seeds {sorted(theirs)}) share no seed."
        )
    target, leaning = own.shared["target"], own.shared["leaning"]
    runs = [(arm, trial) for arm, trial in own.arms if arm.method != "vanilla"]
    # Strength 0 is the folder's own vanilla (and so is its control): each frontier starts there, not
    # at the reference's (1, 0).
    for name in dict.fromkeys(arm.method for arm, _ in runs):
        runs += [(Arm(name, 0.0, s, control), mine[s]) for s in seeds for control in (False, True)]
    runs += [(Arm("vanilla", seed=s), theirs[s]) for s in seeds]
    result = summarize(own.base, runs, target, leaning, n_boot=n_boot)
    folder_vanilla = compare_runs(
        own.base.stance,
        [theirs[s].stance for s in seeds],
        [mine[s].stance for s in seeds],
        target,
        leaning,
        n_boot=n_boot,
    )
    if folder_vanilla["target_kept"].value < KEPT:  # the reading would interpolate from the reference's start
        reason = (
            f"the folder's own vanilla keeps {folder_vanilla['target_kept'].value:.2f} of {ref.folder}'s target "
            f"shift (below {KEPT:.0%}): read it against a reference that moves the target less"
        )
        result["at_90"] = {
            m: {**r, "ctg_reduction": None, "control_ctg_reduction": None, "reason": reason}
            for m, r in result["at_90"].items()
        }
        result["league"] = []
    result.update(
        {
            "reference": str(ref.folder),
            "finetune": own.shared["finetune"],
            "reference_finetune": ref.shared["finetune"],
            "folder_vanilla": {"seeds": seeds, **flat_estimates(folder_vanilla)},
            "model": own.shared["model"].get("name"),
            "data": own.shared["data"].get("source"),
            "method_settings": {name: own.methods[name] for name in result["frontier"]},
        }
    )
    return result
