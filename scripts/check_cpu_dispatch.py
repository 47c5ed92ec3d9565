"""Checks the two builds of the vectorised CPU kernels in a build folder (csrc/cpu/capability.h).

- the baseline objects (csrc/cpu/*) hold no AVX instruction, so they run on any x86-64 CPU;
- the AVX2 objects (csrc/cpu/avx2/*) use 256-bit registers, so at::vec really compiled for AVX2;
- no global or weak function of an AVX2 object outside an AVX2 namespace holds AVX code: the
  linker keeps one copy of each inline function, and an AVX copy could serve baseline callers.

    python3 scripts/check_cpu_dispatch.py build/cmake   # or build/temp.linux-x86_64-cpython-311
"""
from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

AVX_INSN = re.compile(r"\s(v[a-z0-9]+)\s")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def avx_functions(obj: Path) -> dict[str, int]:
    """Mangled name -> number of VEX-encoded instructions, for every function of ``obj`` that has any."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    counts: dict[str, int] = {}
    name = None
    for line in text.splitlines():
        if m := FUNCTION.match(line):
            name = m.group(1)
        elif name and AVX_INSN.search(line):
            counts[name] = counts.get(name, 0) + 1
    return counts


def shared_symbols(obj: Path) -> set[str]:
    rows = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout.splitlines()
    return {parts[2] for parts in map(str.split, rows) if len(parts) == 3 and parts[1] in "TWV"}


def demangle(names: list[str]) -> list[str]:
    return subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                          check=True).stdout.splitlines()


def main(build: str) -> int:
    objects = sorted(p for p in Path(build).rglob("*.o") if "/csrc/cpu/" in p.as_posix())
    avx2 = [p for p in objects if "/csrc/cpu/avx2/" in p.as_posix()]
    if not avx2:
        # Only x86 builds with GCC have them (setup.py, CMakeLists.txt); elsewhere nothing to check.
        print(f"check_cpu_dispatch: no csrc/cpu/avx2 objects under {build} (a build without runtime dispatch)")
        return 1 if platform.machine() in ("x86_64", "AMD64") else 0
    errors = []
    for obj in objects:
        counts = avx_functions(obj)
        if obj not in avx2:
            if counts:
                errors.append(f"{obj}: baseline object with AVX code in {len(counts)} functions")
            continue
        listing = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
        ymm = listing.count("%ymm")
        if ymm == 0:
            errors.append(f"{obj}: no 256-bit instruction: at::vec did not compile for AVX2")
        leaked = [d for d in demangle(sorted(shared_symbols(obj) & counts.keys())) if "::AVX2::" not in d]
        errors += [f"{obj}: shared function with AVX code outside an AVX2 namespace: {d}" for d in leaked]
        print(f"check_cpu_dispatch: {obj.name} (AVX2): {ymm} ymm instructions, no AVX code shared")
    print("\n".join(errors) or f"check_cpu_dispatch: ok ({len(objects)} objects)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build"))
