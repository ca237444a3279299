"""The CLI imports only the module of the command it runs: `kiosk door off` (the unit's ExecStopPost, which locks the
door after a crash) loads neither the gallery nor the pipeline, nor OpenCV, onnxruntime, sqlite-utils or numpy."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiosk.cli import COMMAND_MODULES, build_parser, command_word

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("cv2", "onnxruntime", "sqlite_utils", "numpy", "kiosk.gallery", "kiosk.recognition.pipeline", "kiosk.context")


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


@pytest.mark.parametrize("module", sorted(COMMAND_MODULES))
def test_the_table_names_exactly_the_commands_each_module_registers(module: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(f"kiosk.cli.{module}").register(sub)
    assert tuple(sub.choices) == COMMAND_MODULES[module]


def test_the_full_parser_lists_every_command_once() -> None:
    listed = _commands(build_parser())
    assert listed == [c for commands in COMMAND_MODULES.values() for c in commands]
    assert len(set(listed)) == len(listed)


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["door", "off"], "door"),
        (["-c", "door", "run"], "run"),
        (["--config", "x.yaml", "--debug", "people", "list"], "people"),
        (["--config=x.yaml", "events"], "events"),
        (["--log-level", "DEBUG", "check"], "check"),
        (["--", "enroll"], "enroll"),
        (["--conf", "door", "run"], "run"),  # argparse's abbreviation of --config takes the next word
        (["--log-level", "LOUD", "door"], None),  # a bad value: the whole parser reports it
        (["--help"], None),
        ([], None),
    ],
)
def test_command_word_skips_options_and_their_values(argv: list[str], word: str | None) -> None:
    assert command_word(argv) == word


def test_a_command_parser_accepts_what_the_full_parser_accepts() -> None:
    argv = ["--debug", "door", "on-pulse", "--seconds", "1"]
    assert (
        vars(build_parser(command_word(argv)).parse_args(argv)).keys() == vars(build_parser().parse_args(argv)).keys()
    )


def test_door_off_imports_no_gallery_pipeline_or_native_runtime(tmp_path: Path) -> None:
    probe = (
        "import json, sys\n"
        "from kiosk.cli import main\n"
        "rc = main(['door', 'off'])\n"
        "print(json.dumps({'rc': rc, 'modules': sorted(sys.modules)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    loaded = [m for m in result["modules"] if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert loaded == []
    assert "kiosk.door.relay" in result["modules"]  # the probe did run the command
