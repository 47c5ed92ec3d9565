"""Test-time purification: objectives, view sampler, step rules and the Purifier."""
from .early_exit import EarlyExit
from .objectives import ContrastiveObjective
from .purifier import Purifier, PurifyResult, check_images
from .protocol import PurifierLike
from .steps import ProjectedStep, check_eps, reverse_settings, reverse_step_size
from .views import ViewSampler

__all__ = ["ContrastiveObjective", "EarlyExit", "ProjectedStep", "Purifier", "PurifierLike", "PurifyResult",
           "ViewSampler", "check_eps", "check_images", "reverse_settings", "reverse_step_size"]
