"""The command line as the README documents it: every documented command parses, every
number flag reads ``8/255``, a user error is one line and exit status 2, a bug keeps its
traceback, and every command builds its purifier with the one factory's defaults."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch

from cifar_zips import write_cifar_zips
from pyengine import Purifier, load_purifier
from pyengine.cli import build_parser, main
from pyengine.cli.flags import parse_number
from pyengine.demo import STANDARD_CHECKPOINT

REPO = Path(__file__).resolve().parent.parent
# The README's "Command line" table, placeholders filled in.
TABLE = [
    "train-classifier --model preact_resnet_tiny --out F --device cuda --precision bf16",
    "train-classifier --model preact_resnet_tiny --out F --adversarial fgsm",
    "train-classifier --model preact_resnet_tiny --out F --aux reconstruction",
    "train-head --checkpoint F --out G --precision bf16",
    "demo",
    "eval --attacks pgd50,bpda-pgd50 --out DIR --figures 3 --precision bf16",
    "purify IMAGES --out DIR",
    "bench A.json B.json",
    "parity --n 10000 --precision bf16 --compile",
    "results DIR --out docs/RESULTS.md",
    "export onnx --checkpoint F --out M.onnx",
    "export tensorrt --onnx M.onnx --out M.plan",
    "export check --onnx M.onnx",
]


def documented_commands() -> list[str]:
    """``python3 -m pyengine ...`` lines of the README's and docs' shell blocks (continuations
    joined, comments dropped), except those with shell variables or elisions."""
    commands = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                found = re.search(r"-m pyengine\s+(.*)", line.split(" #")[0])
                if found and "$" not in line and "..." not in line:
                    commands.append(found.group(1))
    return commands


def every_action(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_action(sub)
        else:
            yield parser.prog, action


@pytest.mark.parametrize("command", TABLE + documented_commands())
def test_every_documented_command_parses(command):
    assert documented_commands(), "the docs' shell blocks were not read"
    args = build_parser().parse_args(shlex.split(command))
    assert callable(args.func)


def test_every_number_flag_reads_fractions_through_the_one_parser():
    checked = []
    for prog, action in every_action(build_parser()):
        assert action.type not in (float, int), f"{prog} {action.option_strings}: use flags.number_in / int_in"
        if getattr(action.type, "__qualname__", "").startswith("number_in"):
            assert action.type("8/255") == pytest.approx(8 / 255), (prog, action.option_strings)
            checked.append(f"{prog} {action.option_strings[0]}")
    for flag in ("pyengine demo --eps", "pyengine purify --eps-v", "pyengine export onnx --eps-v",
                 "pyengine export onnx --soap-eps", "pyengine train-classifier --lr", "pyengine parity --tolerance"):
        assert flag in checked
    assert parse_number("8/255") == 8 / 255 and parse_number("0.5") == 0.5
    for bad in ("8/0", "nan", "inf/2", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="number"):
            parse_number(bad)


@pytest.mark.parametrize("argv, message", [
    (["demo", "--eps", "8/256x"], "argument --eps: expected a number such as 0.03 or 8/255"),
    (["export", "onnx", "--checkpoint", "m", "--out", "o", "--eps-v", "2"], "expected a number in (0, 1]"),
    (["export", "tensorrt", "--onnx", "m", "--out", "o", "--fp32"], "unrecognized arguments: --fp32"),
    (["purify", "missing_folder", "--checkpoint", "missing.safetensors", "--out", "o"], "not found"),
    (["export", "onnx", "--checkpoint", "missing.safetensors", "--out", "o.onnx"], "not found"),
])
def test_a_user_error_is_one_line_and_exit_status_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("pyengine") and "error:" in err, err


def test_a_bug_inside_a_command_keeps_its_traceback(monkeypatch, tmp_path):
    from pyengine.evaluation import paper

    def broken(*args):
        raise TypeError("a bug")

    monkeypatch.setattr(paper, "results_markdown", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["results", str(tmp_path)])


class Built(Exception):
    """Stops a command once it has built its purifier (not a user error: it propagates)."""


def _built_by(argv, monkeypatch, where, name, pick=lambda *a, **k: a[0]):
    def capture(*args, **kwargs):
        raise Built(pick(*args, **kwargs))

    monkeypatch.setattr(where, name, capture)
    with pytest.raises(Built) as built:
        main([str(a) for a in argv])
    return built.value.args[0]


def purifiers_of_every_command(monkeypatch, tmp_path, *flags):
    """The purifier each command builds from the same checkpoint with the same ``flags``."""
    from pyengine import batch, demo, evaluation
    from pyengine.deploy import onnx_export

    data = write_cifar_zips(tmp_path / "cifar10", train_per_class=1, test_per_class=1)
    ckpt = ["--checkpoint", STANDARD_CHECKPOINT]
    return {
        "purify": _built_by(["purify", tmp_path, *ckpt, "--out", tmp_path / "p", *flags], monkeypatch, batch,
                            "purify_images"),
        "eval": _built_by(["eval", *ckpt, "--data", data, "--out", tmp_path / "e", *flags], monkeypatch, evaluation,
                          "evaluate"),
        "demo": _built_by(["demo", *ckpt, "--data", data, *flags], monkeypatch, demo, "run_demo"),
        "export onnx": _built_by(["export", "onnx", *ckpt, "--out", tmp_path / "m.onnx", *flags], monkeypatch,
                                 onnx_export, "export_onnx"),
    }


def settings(purifier) -> tuple:
    return purifier.steps, purifier.step.eps, purifier.step.step_size, purifier.step.random_start


def test_every_command_builds_the_factorys_purifier_with_its_defaults(monkeypatch, tmp_path):
    built = purifiers_of_every_command(monkeypatch, tmp_path)
    expected = settings(load_purifier(STANDARD_CHECKPOINT))
    assert expected == (40, 16 / 255, 2 / 255, True)  # the paper's K, eps_v and step
    assert {name: settings(p) for name, p in built.items()} == dict.fromkeys(built, expected)
    assert settings(Purifier.from_checkpoint(STANDARD_CHECKPOINT)) == expected


def test_the_step_size_follows_eps_v_in_every_command(monkeypatch, tmp_path):
    built = purifiers_of_every_command(monkeypatch, tmp_path, "--eps-v", "8/255", "--steps", "3")
    expected = (3, 8 / 255, 1 / 255, True)
    assert {name: settings(p) for name, p in built.items()} == dict.fromkeys(built, expected)
    assert settings(load_purifier(STANDARD_CHECKPOINT, eps_v=8 / 255, steps=3)) == expected
    model = Purifier.from_checkpoint(STANDARD_CHECKPOINT)
    assert Purifier(model.classifier, model.objective.head, eps=4 / 255).step.step_size == 0.5 / 255
    assert Purifier(model.classifier, model.objective.head, eps=4 / 255, step_size=3 / 255).step.step_size == 3 / 255


def test_parity_builds_both_paths_with_the_factory(monkeypatch, tmp_path):
    from pyengine.evaluation import parity

    data = write_cifar_zips(tmp_path / "cifar10", train_per_class=1, test_per_class=1)
    reference, fast = _built_by(["parity", "--checkpoint", STANDARD_CHECKPOINT, "--data", data, "--device", "cpu"],
                                monkeypatch, parity, "check_parity", lambda r, f, *a, **k: (r, f))
    assert settings(reference) == settings(fast) == settings(load_purifier(STANDARD_CHECKPOINT))
    assert (reference.precision, reference.cuda_graph, reference.channels_last) == ("fp32", False, False)
    assert (fast.precision, fast.cuda_graph, fast.channels_last) == ("auto", True, True)
    assert reference.manifest == fast.manifest == load_purifier(STANDARD_CHECKPOINT).manifest


def test_the_factory_refuses_what_does_not_apply(tmp_path):
    with pytest.raises(ValueError, match="soap_eps .* applies to SOAP checkpoints"):
        load_purifier(STANDARD_CHECKPOINT, soap_eps=4 / 255)
    with pytest.raises(ValueError, match="kind must be"):
        load_purifier(STANDARD_CHECKPOINT, kind="min-aux")
    with pytest.raises(TypeError, match="eps_v"):
        load_purifier(STANDARD_CHECKPOINT, eps=4 / 255)
    purifier = load_purifier(STANDARD_CHECKPOINT, image_size=None, cuda_graph=False)
    assert purifier.image_size is None and not purifier.cuda_graph
    assert isinstance(purifier.manifest, dict) and purifier.manifest["architecture"] == "preact_resnet_tiny"
    assert torch.is_tensor(purifier.objective.bank)  # the checkpoint's bank of negatives


def test_every_flag_is_read_by_its_command():
    """No dead flags: each destination is read as ``args.<dest>`` in the command-line package."""
    import pyengine.cli

    source = "\n".join(path.read_text() for path in Path(pyengine.cli.__file__).parent.glob("*.py"))
    read = set(re.findall(r"args\.(\w+)", source)) | set(re.findall(r'getattr\(args, "(\w+)"', source))
    unread = {f"{prog} {action.option_strings or action.dest}" for prog, action in every_action(build_parser())
              if action.dest not in read and action.dest not in ("help", "command")}
    assert not unread
