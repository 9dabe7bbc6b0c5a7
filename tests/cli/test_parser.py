"""The command line before any work starts (issue 28, items 1 and 4): ``--help`` and ``--version`` load
no heavy module, every option is explained, bad values and a missing GPU are one line before a model
loads, ``predict`` takes folders, and one-process commands pin their threads."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from boneage.cli import COMMANDS, build_parser
from boneage.devices import POOL_ENVS, THREADS_ENV
from boneage.jobs.arguments import TRAIN_FIELDS
from tests.helpers import FIXTURES, ROOT, run_cli

HEAVY = {"torch", "torchvision", "ray", "pyarrow", "pydicom", "cv2", "pandas"}
GOOD = [FIXTURES / "rsna_1377.png", FIXTURES / "rsna_7047.png"]
ABSENT_MODEL = "/nonexistent/model.pt"  # loading it fails with "checkpoint not found": proof it was never loaded


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def imported_modules(*args: str) -> set[str]:
    """The top-level packages ``python -X importtime -m boneage ARGS`` imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "boneage", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = re.findall(r"^import time:\s*\d+ \|\s*\d+ \|\s*(\S+)$", proc.stderr, re.MULTILINE)
    assert names, proc.stderr[-2000:]
    return {name.split(".")[0] for name in names}


@pytest.mark.integration
@pytest.mark.parametrize("args", [("--help",), ("--version",), ("predict", "--help"), ("score", "--help"),
                                  ("train", "--help"), ("listen", "--help"), ("preprocess", "--help"),
                                  ("calibrate", "--help"), ("evaluate", "--help")])
def test_help_and_version_import_no_heavy_module(args):
    assert not imported_modules(*args) & HEAVY


def test_every_option_is_explained_and_every_command_has_an_example():
    missing = [f"{name} {action.option_strings or action.dest}" for name, parser in subcommands().items()
               for action in parser._actions if not action.help]
    assert not missing, missing
    assert all("example:\n  boneage " + name in parser.epilog for name, parser in subcommands().items())
    text = subcommands()["predict"].format_help()
    assert "(default: 16)" in text and "(default: auto)" in text and "(default: None)" not in text


def test_every_command_is_one_entry_of_the_table_run_by_a_function_of_its_module():
    """The table is the parser: each command's module is named, not imported, until the command runs."""
    assert list(subcommands()) == [command.name for command in COMMANDS]
    for command in COMMANDS:
        module, function = command.run.split(":")
        tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
        assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, command.run


def test_the_jobs_start_one_way():
    """``boneage X`` (= ``python -m boneage X``): no module is a program of its own, no job has a ``main``
    of its own, and ray_jobs/ holds aliases of the command and nothing else."""
    for path in ROOT.joinpath("boneage").rglob("*.py"):
        if path.name != "__main__.py":
            assert '__name__ == "__main__"' not in path.read_text(), path
    for path in ROOT.joinpath("boneage", "jobs").glob("*.py"):
        assert "main" not in {node.name for node in ast.parse(path.read_text()).body
                              if isinstance(node, ast.FunctionDef)}, path
    aliases = sorted(p for p in ROOT.joinpath("ray_jobs").glob("*.py") if p.name != "__init__.py")
    assert [p.stem for p in aliases] == ["preprocess", "score", "train"]
    for path in aliases:
        body = ast.parse(path.read_text()).body[1:]  # after the docstring
        assert ast.unparse(body) == ("import sys\nfrom boneage.cli import main\nif __name__ == '__main__':\n"
                                     f"    sys.exit(main(['{path.stem}', *sys.argv[1:]]))"), path


@pytest.mark.integration
def test_an_alias_is_the_command():
    alias, command = (subprocess.run([sys.executable, "-m", *args, "--help"], capture_output=True, text=True,
                                     cwd=ROOT, timeout=120) for args in (["ray_jobs.score"], ["boneage", "score"]))
    assert alias.returncode == command.returncode == 0 and alias.stdout == command.stdout, alias.stderr


def test_train_options_match_the_training_config():
    from boneage.train.loop import TrainConfig

    numeric = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("int", "float", "int | None")}
    assert {name for name, *_ in TRAIN_FIELDS} == numeric
    assert all(getattr(TrainConfig(), name) == default for name, _, default, _ in TRAIN_FIELDS)
    args = subcommands()["train"].parse_args(["--data", "d", "--val-fraction", "0.1", "--out", "m", "--epochs", "3",
                                              "--schedule", "cosine"])
    from boneage.jobs.train import config_from_args

    config = config_from_args(args)
    assert (config.epochs, config.schedule, config.lr) == (3, "cosine", TrainConfig().lr)


def test_train_options_come_from_the_flags_of_their_names():
    from boneage.jobs.train import RunOptions, TrainData, TrainScaling

    args = subcommands()["train"].parse_args(["--data", "d", "--val-fraction", "0.1", "--out", "m", "--storage", "s",
                                              "--select", "last", "--workers", "3", "--torch-threads", "2"])
    assert TrainData.from_args(args) == TrainData("d", val_fraction=0.1)
    assert RunOptions.from_args(args) == RunOptions("m", storage_path="s", select="last")
    assert TrainScaling.from_args(args) == TrainScaling(workers=3, torch_threads=2)
    args = subcommands()["train"].parse_args(["--data", "d", "--val", "v", "--out", "m"])
    assert TrainData.from_args(args) == TrainData("d", val="v")


def test_save_preprocessed_states_the_shipped_models_sizes():
    from boneage.predict.predictor import Predictor

    text = " ".join(subcommands()["predict"].format_help().split())
    sizes = re.findall(r"(\d+)x\1 for (\w+)", text)
    assert {name for _, name in sizes} == {"hires", "rsna100"}
    for size, name in sizes:
        assert Predictor.load(name, device="cpu").preprocess_config.output_size == int(size)


@pytest.mark.parametrize("args", [
    ("predict", "x.png", "--sex", "x"),
    ("predict", "x.png", "--device", "gpu"),
    ("predict", "x.png", "--batch-size", "0"),
    ("report", "x.png", "--out", "x.txt"),
    ("calibrate", "--data", "d", "--out", "o", "--level", "1.5"),
    ("evaluate", "--data", "d", "--out", "o", "--val-fraction", "0"),
    ("listen", "--destination", "h:1:A", "--port", "70000"),
    ("score", "f", "--out", "o", "--sex", "boy"),
    ("train", "--data", "d", "--val-fraction", "0.1", "--out", "m", "--epochs", "0"),
])
def test_bad_values_fail_at_parse_time(args, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(args)
    assert exc.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_evaluate_and_calibrate_need_no_model():
    parser = build_parser()
    assert parser.parse_args(["evaluate", "--data", "d", "--out", "o"]).model is None
    assert parser.parse_args(["calibrate", "--data", "d", "--out", "o"]).model is None
    assert parser.parse_args(["predict", "a.png", "--sex", "female"]).sex == "F"


@pytest.mark.integration
def test_bad_sex_fails_before_the_model_loads():
    proc = run_cli("predict", str(GOOD[0]), "--sex", "x", "--model", ABSENT_MODEL)
    assert proc.returncode == 2 and "invalid choice: 'X'" in proc.stderr, proc.stderr
    assert "checkpoint not found" not in proc.stderr and not proc.stdout


@pytest.mark.integration
def test_a_missing_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli("predict", str(GOOD[0]), "--sex", "M", "--device", "cuda", "--model", ABSENT_MODEL)
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.strip().splitlines() == ["error: --device cuda: no CUDA GPU is usable on this machine "
                                                "(use --device cpu or auto)"]


@pytest.mark.integration
def test_predict_scores_the_images_of_a_folder_in_order(tmp_path):
    folder = tmp_path / "films"
    (folder / "inner").mkdir(parents=True)
    shutil.copy(GOOD[0], folder / "b.png")
    shutil.copy(GOOD[1], folder / "inner" / "a.png")
    (folder / "notes.txt").write_text("not a film")
    (folder / ".hidden.png").write_bytes(GOOD[0].read_bytes())
    proc = run_cli("predict", str(GOOD[1]), str(folder), "--sex", "F", "--json", "--model", "rsna100")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(GOOD[1]), str(folder / "b.png"), str(folder / "inner" / "a.png")]
    assert all(r["error"] is None and r["bone_age_months"] > 0 for r in rows)
    assert rows[0]["bone_age_months"] == rows[2]["bone_age_months"]  # the same film, named and found
    assert f"{folder}: 2 entries skipped (" in proc.stderr


@pytest.mark.integration
def test_evaluate_uses_the_shipped_model_by_default(tmp_path):
    films = tmp_path / "films"
    films.mkdir()
    for path in GOOD:
        shutil.copy(path, films / path.name)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,boneage,male\nrsna_1377,180,True\nrsna_7047,100,False\n")
    env = {k: v for k, v in os.environ.items() if k != "BONEAGE_MODEL"}
    proc = run_cli("evaluate", "--data", str(films), "--labels", str(labels), "--out", str(tmp_path / "ev"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["model"] == "hires"


THREADS_SCRIPT = """
import sys
from boneage.cli import main
status = main(sys.argv[1:])
import cv2, torch
print(status, torch.get_num_threads(), cv2.getNumThreads())
"""


@pytest.mark.integration
@pytest.mark.parametrize(("extra", "env", "expected"), [((), {}, "1 1"), (("--threads", "2"), {}, "2 2"),
                                                        ((), {THREADS_ENV: "2"}, "2 2")])
def test_one_process_commands_pin_their_threads(extra, env, expected):
    clean = {k: v for k, v in os.environ.items() if k not in (*POOL_ENVS, THREADS_ENV)}
    proc = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, "predict", str(GOOD[0]), "--sex", "M", "--model",
                           "rsna100", *extra], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**clean, **env})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"0 {expected}"
