"""Test-time purification: objectives, view sampler, step rules and the Purifier."""
from .objectives import ContrastiveObjective
from .purifier import Purifier, PurifyResult, check_images
from .steps import ProjectedStep, check_eps, reverse_settings, reverse_step_size
from .views import ViewSampler

__all__ = ["ContrastiveObjective", "ProjectedStep", "Purifier", "PurifyResult", "ViewSampler", "check_images", "check_eps",
           "reverse_settings", "reverse_step_size"]
