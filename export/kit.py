"""The edge kit's loader, and the command that assembles a kit folder for a device.

The kit runs an exported purifier without torch and without the pyengine package (whose
import pulls in torch). It needs two pyengine modules that import only numpy (ONNX Runtime,
TensorRT and cuda-python on use): ``pyengine/deploy/runtime.py`` (the host sampler and the
purify loop) and ``pyengine/deploy/tensorrt.py`` (plan builder and runner). :func:`load`
executes them from their files, found in this order:

1. beside this script as ``pyengine_runtime.py`` / ``pyengine_tensorrt.py`` (an assembled kit);
2. in the pyengine checkout this script lies in (``../pyengine/deploy/``);
3. in an installed pyengine, located without importing it.

    python3 kit.py DEST [--model model.onnx]   # DEST: a folder to copy onto the device as is
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = ("runtime", "tensorrt")
SCRIPTS = ("kit.py", "purify_images.py", "build_plan.py", "README.md")


def _candidates(name: str) -> list[Path]:
    found = [HERE / f"pyengine_{name}.py", HERE.parent / "pyengine" / "deploy" / f"{name}.py"]
    spec = importlib.util.find_spec("pyengine")  # finds the package without running its __init__
    if spec is not None and spec.submodule_search_locations:
        found += [Path(p) / "deploy" / f"{name}.py" for p in spec.submodule_search_locations]
    return found


def source(name: str) -> Path:
    """The file of pyengine's ``deploy/<name>.py`` the kit uses (see the module doc)."""
    if name not in MODULES:
        raise ValueError(f"name must be one of {MODULES}, got {name!r}")
    for path in _candidates(name):
        if path.is_file():
            return path
    raise SystemExit(f"kit: pyengine's {name}.py not found beside {HERE} (as pyengine_{name}.py), in a checkout "
                     "or in an installed pyengine; assemble the kit with `python3 kit.py DEST` where one is")


def load(name: str):
    """pyengine's ``deploy/<name>.py`` as the module ``pyengine_<name>``, torch-free."""
    module_name = f"pyengine_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, source(name))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def assemble(dest: Path, model: Path | None = None) -> list[Path]:
    """Write a self-contained kit into ``dest``: the scripts, the two modules and the model
    with its sidecar. -> the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    pairs = [(HERE / name, dest / name) for name in SCRIPTS]
    pairs += [(source(name), dest / f"pyengine_{name}.py") for name in MODULES]
    if model is not None:
        if not model.is_file() or not model.with_suffix(".json").is_file():
            raise SystemExit(f"kit: {model} and its sidecar {model.with_suffix('.json')} must both exist")
        pairs += [(model, dest / model.name), (model.with_suffix(".json"), dest / model.with_suffix(".json").name)]
    for src, dst in pairs:
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Assemble the edge kit into a folder to copy onto a device.")
    parser.add_argument("dest", type=Path, help="the kit folder to write")
    parser.add_argument("--model", type=Path, default=None, help="an exported .onnx (its .json sidecar is copied too)")
    args = parser.parse_args(argv)
    for path in assemble(args.dest, args.model):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
