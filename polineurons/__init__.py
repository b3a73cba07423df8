"""polineurons: measure, localize and mitigate political-stance cross-topic generalization."""

from polineurons.models import load_model

__all__ = ["load_model"]
__version__ = "0.1.0"
