"""What a wheel install depends on: package data found through importlib.resources, the
CIFAR-10 location, the reason a failed extension import gives, the optional extras."""
from __future__ import annotations

import fnmatch
import importlib
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from pyengine import resources
from pyengine.data import DataError
from pyengine.ops import _extension

REPO = Path(__file__).resolve().parent.parent
SHIPPED = "cifar10_preact_resnet_tiny.safetensors"


# ---------------------------------------------------------------- package data


def test_shipped_checkpoints_are_found_by_path_or_by_name(monkeypatch, tmp_path):
    folder = resources.checkpoints_dir()
    assert SHIPPED in resources.shipped_checkpoints() and (folder / SHIPPED).is_file()
    documented = Path("pyengine", "checkpoints", SHIPPED)
    monkeypatch.chdir(tmp_path)  # not the checkout: the documented relative path does not exist here
    assert resources.resolve_checkpoint(SHIPPED) == folder / SHIPPED
    assert resources.resolve_checkpoint(SHIPPED.removesuffix(".safetensors")) == folder / SHIPPED
    assert resources.resolve_checkpoint(documented) == folder / SHIPPED
    own = tmp_path / SHIPPED
    own.write_bytes(b"not the shipped one")
    assert resources.resolve_checkpoint(SHIPPED) == Path(SHIPPED)  # an existing file wins
    with pytest.raises(FileNotFoundError, match=f"nope.safetensors.*shipped: .*{SHIPPED}"):
        resources.resolve_checkpoint("nope.safetensors")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: elsewhere"):
        resources.resolve_checkpoint(Path("elsewhere", SHIPPED))  # a path other than the documented one


def test_the_trt_operator_tables_are_package_data():
    from pyengine.deploy.trt_compat import OPS_DIR, available_versions, load_matrix

    assert OPS_DIR == resources.trt_ops_dir() and OPS_DIR.is_relative_to(Path(resources.package_path()))
    assert available_versions() == ["8.5", "8.6", "10.3"]
    assert load_matrix("8.6")["opset_max"] >= 17


def test_every_tracked_package_file_is_in_the_wheel_patterns():
    """A data file added under pyengine/ without a package-data pattern would be left out of wheels."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["pyengine"]
    excluded = config["exclude-package-data"]["pyengine"]
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "pyengine"], capture_output=True, text=True,
                             check=True).stdout.split()
    data = [Path(p).relative_to("pyengine").as_posix() for p in tracked if not p.endswith(".py")]
    assert "py.typed" in data and any(p.startswith("deploy/trt_supported_ops/") for p in data)
    left_out = [p for p in data if not any(fnmatch.fnmatch(p, pat) for pat in patterns)
                or any(fnmatch.fnmatch(p, pat) for pat in excluded)]
    assert not left_out, f"add these to [tool.setuptools.package-data]: {left_out}"


def test_the_version_is_written_once():
    import pyengine

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pyengine.__version__"}
    assert "version=" not in (REPO / "setup.py").read_text()
    assert pyengine.__version__.count(".") == 2


# ---------------------------------------------------------------- CIFAR-10 location


def _checkout(root: Path, with_data: bool) -> Path:
    repo = root / "repo"
    (repo / "pyengine").mkdir(parents=True)
    (repo / "pyengine" / "__init__.py").write_text("")
    (repo / "pyproject.toml").write_text("")
    (repo / "sub").mkdir()
    if with_data:
        (root / "shared" / "data" / "cifar10").mkdir(parents=True)
    return repo


def test_data_path_flag_then_env_then_the_checkout_default(monkeypatch, tmp_path):
    monkeypatch.delenv(resources.DATA_ENV, raising=False)
    repo = _checkout(tmp_path, with_data=True)
    monkeypatch.chdir(repo)
    assert resources.cifar10_path() == Path("../shared/data/cifar10")  # as the README writes it
    monkeypatch.chdir(repo / "sub")
    assert resources.cifar10_path() == tmp_path.resolve() / "shared" / "data" / "cifar10"
    monkeypatch.setenv(resources.DATA_ENV, str(tmp_path / "env"))
    assert resources.cifar10_path() == tmp_path / "env"
    assert resources.cifar10_path(tmp_path / "flag") == tmp_path / "flag"


def test_no_data_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv(resources.DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # in no checkout
    with pytest.raises(DataError, match="no CIFAR-10 data set given: get CIFAR-10 .*--data PATH or set PYENGINE_DATA"):
        resources.cifar10_path()
    repo = _checkout(tmp_path / "bare", with_data=False)
    monkeypatch.chdir(repo)
    with pytest.raises(DataError, match=r"no \.\./shared/data/cifar10 beside the checkout .*PYENGINE_DATA"):
        resources.cifar10_path()


# ---------------------------------------------------------------- the extension's import


def _fake_import(monkeypatch, error: ImportError, built: str | None):
    real = importlib.import_module

    def fake(name, *args):
        if name == "pyengine._C":
            raise error
        if name == "pyengine._build_info":
            if built is None:
                raise ModuleNotFoundError("No module named 'pyengine._build_info'", name=name)
            return _info(built)
        return real(name, *args)

    monkeypatch.setattr(_extension.importlib, "import_module", fake)


def _info(version: str):
    module = type(sys)("pyengine._build_info")
    module.TORCH_VERSION = version
    return module


ABI = ImportError("pyengine/_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")


def test_an_abi_mismatch_names_both_torch_versions(monkeypatch):
    _fake_import(monkeypatch, ABI, built="2.9.0+cpu")
    module, reason = _extension._load()
    assert module is None
    assert "failed to import (ImportError: pyengine/_C.so: undefined symbol" in reason
    assert f"built against torch 2.9.0+cpu, running torch {torch.__version__}: rebuild it" in reason


def test_a_failed_import_under_the_build_torch_and_an_unrecorded_build(monkeypatch):
    _fake_import(monkeypatch, ABI, built=torch.__version__)
    assert f"built against this torch ({torch.__version__})" in _extension._load()[1]
    _fake_import(monkeypatch, ABI, built=None)
    assert "built against an unrecorded torch version" in _extension._load()[1]


def test_not_built_reads_not_built(monkeypatch):
    _fake_import(monkeypatch, ModuleNotFoundError("No module named 'pyengine._C'", name="pyengine._C"), built=None)
    reason = _extension._load()[1]
    assert reason.startswith("pyengine._C is not built; build it with") and "failed" not in reason


def test_the_fallback_warns_once_with_the_reason(monkeypatch):
    _fake_import(monkeypatch, ABI, built="2.9.0+cpu")
    module, reason = _extension._load()
    monkeypatch.setattr(_extension, "_C", module)
    monkeypatch.setattr(_extension, "_LOAD_ERROR", reason)
    monkeypatch.setattr(_extension, "_warned", False)
    assert _extension.extension_error() == reason
    with pytest.warns(RuntimeWarning, match="fused kernels unavailable .*built against torch 2.9.0"):
        assert not _extension.use_fused(torch.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _extension.use_fused(torch.zeros(1))  # once


# ---------------------------------------------------------------- optional extras


def test_figures_without_matplotlib_name_the_extra(monkeypatch):
    from pyengine.evaluation import figures

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'pyengine\[plots\]'"):
        figures.pyplot()


def test_torchattacks_missing_names_the_extra_and_no_deps(monkeypatch):
    from pyengine.attacks.external import require_torchattacks

    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ImportError, match=r"pyengine\[attacks\].*--no-deps torchattacks==3.5.1"):
        require_torchattacks()


def test_importing_pyengine_needs_neither_matplotlib_nor_torchattacks():
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['torchattacks'] = None\n"
            "import pyengine, pyengine.evaluation, pyengine.attacks, pyengine.cli\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)


def test_the_gpu_pipeline_without_data_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    from pyengine.gpu_pipeline.cli import main

    monkeypatch.delenv(resources.DATA_ENV, raising=False)
    monkeypatch.delenv("DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["carry", "--out", str(tmp_path / "out")]) == 2
    assert "error: no CIFAR-10 data set given" in capsys.readouterr().err


def test_the_cli_takes_data_and_checkpoints_from_resources(monkeypatch, tmp_path, capsys):
    from pyengine.cli import main

    monkeypatch.delenv(resources.DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # in no checkout
    assert main(["demo", "--n", "1"]) == 2
    assert "pyengine demo: error: no CIFAR-10 data set given" in capsys.readouterr().err
    import pyengine.loading

    def refuse(path, **settings):
        raise ValueError(f"would load {path}")

    monkeypatch.setattr(pyengine.loading, "load_purifier", refuse)
    monkeypatch.setenv(resources.DATA_ENV, str(tmp_path))
    assert main(["demo", "--checkpoint", SHIPPED.removesuffix(".safetensors")]) == 2
    assert f"would load {resources.checkpoints_dir() / SHIPPED}" in capsys.readouterr().err
