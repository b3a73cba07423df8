"""polineurons: measure, localize and mitigate political-stance cross-topic generalization.

The verbs and the types a user handles, importable from the package itself::

    from polineurons import load_model, load_data, measure_stance, finetune, measure_generalization

Each name is imported on first use (``import polineurons`` alone loads no model code), from the module
that defines it — where its documentation lives.
"""

from __future__ import annotations

import importlib

# name -> the module that defines it
_EXPORTS = {
    # models and data
    "load_model": "polineurons.models",
    "bridge_hf_model": "polineurons.models",
    "generate_answers": "polineurons.models",
    "load_data": "polineurons.data",
    "StanceDataset": "polineurons.data.items",
    # measuring stance and spill-over
    "measure_stance": "polineurons.stance",
    "ScoringConfig": "polineurons.stance",
    "StanceConfig": "polineurons.stance",
    "StanceResult": "polineurons.stance",
    "measure_generalization": "polineurons.generalization",
    # fine-tuning, with or without an intervention
    "finetune": "polineurons.training",
    "training_pairs": "polineurons.training",
    "FinetuneConfig": "polineurons.training",
    # neurons: sets, recording, interventions
    "NeuronSet": "polineurons.neurons",
    "record_neurons": "polineurons.hooks",
    "scale_neurons": "polineurons.hooks",
    "Intervention": "polineurons.hooks",
    "ScaleNeurons": "polineurons.hooks",
    "FreezeNeurons": "polineurons.hooks",
    "StopGradNeurons": "polineurons.hooks",
    "AblateDirections": "polineurons.hooks",
    "SteerResidual": "polineurons.hooks",
    "Combined": "polineurons.hooks",
    "KLToBase": "polineurons.regularizers",
    "Replay": "polineurons.regularizers",
    # localizing and patching
    "localize": "polineurons.pnlac",
    "LocalizeConfig": "polineurons.pnlac",
    "Localization": "polineurons.localization",
    "patch_experiment": "polineurons.patching",
    "PatchConfig": "polineurons.patching",
    "screen": "polineurons.screening",
    "ScreenConfig": "polineurons.screening",
    # plans of trials in a study folder, and reading their results
    "Study": "polineurons.study",
    "LaunchConfig": "polineurons.launch",
    "run_pipeline": "polineurons.experiment",
    "RunConfig": "polineurons.config",
    "run_matrix": "polineurons.matrix",
    "MatrixConfig": "polineurons.matrix",
    "run_mitigation": "polineurons.mitigate",
    "MitigateConfig": "polineurons.methods",
    "run_layer_search": "polineurons.layer_search",
    "LayerSearchConfig": "polineurons.layer_search",
    "spill_geometry": "polineurons.geometry",
    "geometry_folder": "polineurons.geometry",
    "GeometryConfig": "polineurons.geometry",
    "league_across": "polineurons.league",
    "frontier_against": "polineurons.against",
    "trial_spec": "polineurons.config",
    "load_run": "polineurons.artifacts",
    "write_pages": "polineurons.report",
}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        try:  # a submodule, as after an eager import: polineurons.models
            return importlib.import_module(f"polineurons.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'polineurons' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
