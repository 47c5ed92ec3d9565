"""The demo's default checkpoint: the GPU-trained PreAct-ResNet-18 on CUDA machines that ship it."""
from __future__ import annotations

import torch

from cifar_zips import write_cifar_zips
from pyengine import demo
from pyengine.cli import main


def test_the_gpu_checkpoint_is_the_default_only_with_cuda_and_the_file(monkeypatch, tmp_path):
    gpu = tmp_path / "cifar10_preact_resnet18_fgsm.safetensors"
    monkeypatch.setattr(demo, "GPU_CHECKPOINT", gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert demo.default_checkpoint() == demo.DEFAULT_CHECKPOINT  # CUDA, but the file is not shipped
    gpu.write_bytes(b"")
    assert demo.default_checkpoint() == gpu
    assert demo.default_checkpoint(cuda=False) == demo.DEFAULT_CHECKPOINT
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo.default_checkpoint() == demo.DEFAULT_CHECKPOINT  # CPU-only: the tiny one stays
    assert demo.DEFAULT_CHECKPOINT.is_file()


def test_pyengine_demo_runs_the_chosen_default(monkeypatch, tmp_path, capsys):
    chosen = demo.STANDARD_CHECKPOINT  # stands in for the GPU checkpoint: a file that differs from the default
    monkeypatch.setattr(demo, "default_checkpoint", lambda cuda=None: chosen)
    data = write_cifar_zips(tmp_path / "cifar10", train_per_class=1, test_per_class=1)
    assert main(["demo", "--n", "2", "--steps", "1", "--attack-steps", "1", "--data", str(data)]) == 0
    assert f"from {chosen}" in capsys.readouterr().out
