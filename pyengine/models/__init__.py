from .registry import create_model, list_models, model_config, register_model, ModelConfig
from . import airbench, preact_resnet, wide_resnet  # noqa: F401  (registers the architectures)
from .head import ContrastiveHead
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_manifest, save_checkpoint
from .features import HookedFeatures
from .fold import fold_batchnorm, foldable_pairs
