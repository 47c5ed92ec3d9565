"""Builds pyengine's extension pyengine._C (the fused ops' C++/CUDA kernels); the package's
metadata is in pyproject.toml.

The extension globs its sources, so a new op only adds files: csrc/*.cpp (schemas and the
module) and csrc/cpu/*.cpp always; csrc/cuda/*.cu when torch was built with CUDA and a CUDA
toolkit is found (a GPU need not be present: the kernels are compiled, not run), or when
PYENGINE_FORCE_CUDA=1. PYENGINE_NO_EXTENSION=1 skips the extension: the pure-PyTorch
reference ops then serve every call. The CPU kernels run on any CPU of the build's architecture
(on x86 an AVX2 build of the vectorised ones is picked at run time; ATEN_CPU_CAPABILITY=default
forces the baseline); PYENGINE_NATIVE=1 builds for the build machine's CPU only.

    MAX_JOBS=1 pip install --no-build-isolation -e .

The torch the extension is compiled against is recorded in pyengine/_build_info.py, so a
failed import of the extension can say whether the running torch differs.
"""
from __future__ import annotations

import glob
import os
import platform
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _compiler_is_gcc() -> bool:
    """The AVX2 kernel builds use GCC's #pragma GCC target; clang would need another route."""
    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return "Free Software Foundation" in version and "clang" not in version


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
    # -ffp-contract=off keeps scalar code rounding each op as the reference ops do (no implicit FMA).
    cxx = ["-O3", "-ffp-contract=off"]
    macros = [("WITH_CUDA", None)] if with_cuda else []
    files = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    x86 = platform.machine() in ("x86_64", "AMD64")
    # at::vec::Vectorized is header-only: without AVX2 it compiles to SSE2 loops and scalar exp.
    # By default the binary runs on any CPU of its architecture: on x86 with GCC the vectorised
    # kernels are also built for AVX2 + FMA (csrc/cpu/avx2, see csrc/cpu/capability.h) and chosen
    # at run time. PYENGINE_NATIVE=1 instead builds everything for this machine's CPU only.
    if os.environ.get("PYENGINE_NATIVE") == "1":
        cxx.append("-march=native")
        if x86 and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            cxx += ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    elif x86 and os.environ.get("PYENGINE_CPU_DISPATCH") != "0" and _compiler_is_gcc():
        files += sources("csrc/cpu/avx2/*.cpp")  # after the baseline objects: see capability.h
        macros.append(("PYENGINE_CPU_DISPATCH", None))
    # -fmad=false is nvcc's -ffp-contract=off: no fused multiply-adds, so the fp32 crop coordinates
    # and colour matrices round like the reference's separate ops (FMAs moved taps by ~1e-6 px).
    nvcc = ["-O3", "-fmad=false"]
    if with_cuda:
        ext = CUDAExtension("pyengine._C", files + sources("csrc/cuda/*.cu"), define_macros=macros,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    else:
        ext = CppExtension("pyengine._C", files, define_macros=macros, extra_compile_args={"cxx": cxx})

    class BuildWithInfo(BuildExtension.with_options(use_ninja=True)):
        """Also writes _build_info.py (not tracked) beside the built _C: the torch it was compiled against."""

        def run(self):
            super().run()
            path = os.path.join(os.path.dirname(self.get_ext_fullpath("pyengine._C")), "_build_info.py")
            with open(path, "w") as f:
                f.write('"""Written by setup.py when it built pyengine._C: the torch it was compiled against."""\n'
                        f"TORCH_VERSION = {torch.__version__!r}\nTORCH_CUDA = {torch.version.cuda!r}\n")

    return [ext], {"build_ext": BuildWithInfo}


ext_modules, cmdclass = _extensions()

setup(ext_modules=ext_modules, cmdclass=cmdclass)
