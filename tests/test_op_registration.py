"""How pyengine._C registers its ops: pt2 tags, and which build of the CPU kernels serves calls."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyengine.ops import _extension

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason="pyengine._C is not built")

ROOT = Path(__file__).resolve().parents[1]
# The ops' value, gradient and opcheck tests; torch.compile's own generated C++ does not build
# under ATEN_CPU_CAPABILITY=default with every torch, so those tests stay in the main run.
VALUE_TESTS = ["tests/test_op_contrastive_loss.py", "tests/test_op_projection_step.py",
               "tests/test_op_sample_views.py", "-k", "not compile"]


def op_names():
    names = torch._C._dispatch_get_all_op_names()
    return sorted(name.split("::")[1] for name in names if name.startswith("pyengine::"))


def run_python(code, **env):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_every_op_has_the_pt2_tag():
    names = op_names()
    assert {"sample_views", "_sample_views_backward", "contrastive_loss", "projection_step_"} <= set(names)
    for name in names:
        op = getattr(torch.ops.pyengine, name).default
        assert torch.Tag.pt2_compliant_tag in op.tags, name


def test_capability_is_one_of_the_builds_and_follows_aten():
    builds, chosen = _extension._C.CPU_KERNEL_BUILDS, _extension._C.CPU_CAPABILITY
    assert chosen in builds
    if "AVX2" in builds and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert chosen == "AVX2"


def test_aten_cpu_capability_default_selects_the_baseline():
    if "DEFAULT" not in _extension._C.CPU_KERNEL_BUILDS:
        pytest.skip("built for one CPU only (PYENGINE_NATIVE=1)")
    code = "import pyengine._C as c, torch; print(c.CPU_CAPABILITY, torch.backends.cpu.get_cpu_capability())"
    assert run_python(code, ATEN_CPU_CAPABILITY="default") == "DEFAULT DEFAULT"


def test_value_tests_pass_on_the_baseline_build():
    """This process runs the tests on the build chosen for this CPU; this runs them on the baseline."""
    if _extension._C.CPU_CAPABILITY == "DEFAULT":
        pytest.skip("this process already runs the baseline build")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *VALUE_TESTS], cwd=ROOT,
                            env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout
