"""pyengine: test-time adversarial purification (Mao et al. 2021; Shi et al. 2021)."""
from .loading import load_purifier
from .models import HookedFeatures, create_model, list_models
from .models.checkpoint import load_checkpoint, save_checkpoint
from .purify import ContrastiveObjective, ProjectedStep, Purifier, PurifierLike, ViewSampler

__version__ = "0.1.0"
__all__ = ["ContrastiveObjective", "HookedFeatures", "ProjectedStep", "Purifier", "PurifierLike", "ViewSampler",
           "benchmark", "create_model", "list_models", "load_checkpoint", "load_purifier", "save_checkpoint"]


def __getattr__(name):
    # The evaluation stack pulls in matplotlib and the attack library: load it on first use.
    if name == "benchmark":
        from .evaluation import benchmark

        return benchmark
    raise AttributeError(f"module 'pyengine' has no attribute {name!r}")
