"""SOAP (Shi et al., ICLR 2021): self-supervised online adversarial purification on the engine.

Auxiliary objectives (:mod:`.objectives`), Algorithm 2 with min-aux radius selection and
the label-using oracle upper bound (:mod:`.select`), checkpoints (:mod:`.checkpoint`;
purifiers from them: :func:`pyengine.load_purifier`). Joint training (Eq. 2) is :func:`pyengine.train.train_classifier` with ``aux=...``.
"""
from .checkpoint import aux_manifest, load_aux_head
from .objectives import (TASK_DEFAULTS, ConsistencyObjective, JointLosses, ReconstructionObjective,
                         RotationObjective, aux_elements, beta_to_lam, corrupt, crop_resize, make_objective, rotate)
from .select import (SOAP_DELTA, SOAP_RADII, SOAP_STEP_SIZE, SOAP_STEPS, Candidate, MinAuxPurifier, MinAuxResult,
                     OracleResult, oracle_purify, soap_purifier)

__all__ = [
    "Candidate", "ConsistencyObjective", "JointLosses", "MinAuxPurifier", "MinAuxResult", "OracleResult",
    "ReconstructionObjective", "RotationObjective", "SOAP_DELTA", "SOAP_RADII", "SOAP_STEPS", "SOAP_STEP_SIZE",
    "TASK_DEFAULTS", "aux_elements", "aux_manifest", "beta_to_lam", "corrupt", "crop_resize", "load_aux_head",
    "make_objective", "oracle_purify", "rotate", "soap_purifier",
]
