"""Shared fixtures. Tests never reach a model hub: offline mode is forced before anything imports
transformers, and tiny models are built into a per-session cache folder."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

from polineurons import load_model

TINY_NAMES = ("tiny-llama", "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("polineurons-cache")


@pytest.fixture(scope="session", params=TINY_NAMES)
def tiny_model(request, tiny_cache):
    """Each tiny architecture in turn (session-scoped: do not mutate its weights)."""
    torch.manual_seed(0)
    return load_model(request.param, device="cpu", cache=tiny_cache)


@pytest.fixture(scope="session")
def tiny_llama(tiny_cache):
    return load_model("tiny-llama", device="cpu", cache=tiny_cache)


@pytest.fixture
def tiny_env(tiny_cache, monkeypatch):
    """Names like "tiny-llama" resolve to the session's tiny models (plans load models by name)."""
    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))


@pytest.fixture
def fresh_tiny_llama(tiny_cache):
    """A private copy whose weights a test may change or train."""
    return load_model("tiny-llama", device="cpu", cache=tiny_cache)


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded SmolLM2-135M-Instruct from the default cache (converted once, then reused)."""
    return load_model(device="cpu")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, tiny_cache):
    """One complete `polineurons run` (smoke preset, tiny-llama): ``(folder, results, stages run)``.
    Read-only for the tests that share it."""
    from polineurons.config import RunConfig
    from polineurons.experiment import run_pipeline

    previous = os.environ.get("POLINEURONS_CACHE")
    os.environ["POLINEURONS_CACHE"] = str(tiny_cache)
    try:
        out = tmp_path_factory.mktemp("smoke-run")
        messages = []
        results = run_pipeline(
            RunConfig.from_preset("smoke", model="tiny-llama"), out, progress=False, echo=messages.append, device="cpu"
        )
    finally:
        if previous is None:
            os.environ.pop("POLINEURONS_CACHE", None)
        else:
            os.environ["POLINEURONS_CACHE"] = previous
    return out, results, [m.split("]")[0][1:] for m in messages if m.endswith("running")]
