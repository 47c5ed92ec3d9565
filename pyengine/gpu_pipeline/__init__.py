"""The papers' settings at their own scale on one GPU, in slots of a few minutes.

``python -m pyengine.gpu_pipeline run`` trains PreAct-ResNet-18 (standard and FGSM-RS) with
their contrastive heads, then SOAP, evaluates each under the Table 1 attacks, AutoAttack
and the adaptive suite, and publishes fp16 checkpoints, raw results and tables; every step
is a ``pyengine`` command. :mod:`.plan` holds the steps, :mod:`.costs` the throughput
measurement and estimates, :mod:`.runner` the deadline-aware scheduler, :mod:`.carry` the
data folder a device call takes along, :mod:`.cli` the command line.
"""
from .plan import GPU, SCALES, SETTINGS, SMOKE, Layout, Scale, Setting, Step

__all__ = ["GPU", "SCALES", "SETTINGS", "SMOKE", "Layout", "Scale", "Setting", "Step"]
