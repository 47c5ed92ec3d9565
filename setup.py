"""Builds pyengine and its extension pyengine._C (the fused ops' C++/CUDA kernels).

The extension globs its sources, so a new op only adds files: csrc/*.cpp (schemas and the
module) and csrc/cpu/*.cpp always; csrc/cuda/*.cu when torch was built with CUDA and a CUDA
toolkit is found (a GPU need not be present: the kernels are compiled, not run), or when
PYENGINE_FORCE_CUDA=1. PYENGINE_NO_EXTENSION=1 skips the extension: the pure-PyTorch
reference ops then serve every call.

    MAX_JOBS=1 pip install --no-build-isolation -e .
"""
from __future__ import annotations

import glob
import os
import platform

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions() -> tuple[list, dict]:
    if os.environ.get("PYENGINE_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    def sources(pattern: str) -> list[str]:
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    with_cuda = ((torch.version.cuda is not None and CUDA_HOME is not None)
                 or os.environ.get("PYENGINE_FORCE_CUDA") == "1")
    # No -std: cpp_extension adds the standard its torch needs (c++20 for torch 2.13).
    cxx = ["-O3"]
    # at::vec::Vectorized is header-only: without these flags it compiles to scalar loops (and
    # scalar exp). They target the build machine's ISA, as ATen's own AVX2 kernels do at run
    # time; PYENGINE_PORTABLE=1 leaves them out for binaries that must run on older x86 CPUs.
    # -ffp-contract=off keeps scalar code rounding each op as the reference ops do (no implicit FMA).
    if (platform.machine() in ("x86_64", "AMD64") and os.environ.get("PYENGINE_PORTABLE") != "1"
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")):
        cxx += ["-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    # -fmad=false is nvcc's -ffp-contract=off: no fused multiply-adds, so the fp32 crop coordinates
    # and colour matrices round like the reference's separate ops (FMAs moved taps by ~1e-6 px).
    nvcc = ["-O3", "-fmad=false"]
    files = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    if with_cuda:
        ext = CUDAExtension("pyengine._C", files + sources("csrc/cuda/*.cu"), define_macros=[("WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    else:
        ext = CppExtension("pyengine._C", files, extra_compile_args={"cxx": cxx})
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="pyengine",
    version="0.1.0",
    description="Test-time adversarial purification with fused contrastive-loss, view-sampling and projection ops",
    packages=find_packages(exclude=("tests", "tests.*", "bench", "bench.*", "export", "export.*")),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "safetensors", "tqdm", "pillow", "matplotlib"],
    extras_require={
        "export": ["onnx", "onnxruntime"],
        "tensorrt": ["tensorrt"],
        "dev": ["pytest", "pytest-benchmark", "ninja", "pybind11"],
    },
    entry_points={"console_scripts": ["pyengine = pyengine.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
