"""pyengine: test-time adversarial purification (Mao et al. 2021; Shi et al. 2021)."""
from .models import create_model, list_models
from .models.checkpoint import load_checkpoint, save_checkpoint
from .purify import ContrastiveObjective, ProjectedStep, Purifier, ViewSampler

__version__ = "0.1.0"
__all__ = ["ContrastiveObjective", "ProjectedStep", "Purifier", "ViewSampler", "create_model",
           "list_models", "load_checkpoint", "save_checkpoint"]
