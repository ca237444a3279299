"""systemd/: the unit, its drop-ins, the sysusers and tmpfiles files.

``systemd-analyze verify`` only warns on unknown keys and bad values (exit 0), so any output on stderr fails a test;
``systemd-analyze security --offline=true`` scores the sandbox, and the goal is an exposure of 2.0 ("OK") or less.
The lines that keep the door safe and stop restart loops are asserted one by one.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kiosk.errors import ExitCode
from tools.measure.webproc import child_process

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD_DIR = ROOT / "systemd"
UNIT = SYSTEMD_DIR / "kiosk.service"
DROP_INS = sorted((SYSTEMD_DIR / "drop-in").glob("*.conf"))
SYSUSERS = SYSTEMD_DIR / "face-kiosk.sysusers.conf"
TMPFILES = SYSTEMD_DIR / "face-kiosk.tmpfiles.conf"
INSTALLED_KIOSK = "/opt/face-kiosk/.venv/bin/kiosk"
DATA_DIR = "/var/lib/face-kiosk"
MAX_EXPOSURE = 2.0
# Exit codes a restart cannot fix: broken config, missing/altered model, insecure data dir, missing/wrong key.
UNFIXABLE = {ExitCode.CONFIG, ExitCode.MODEL, ExitCode.INSECURE, ExitCode.KEY}

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt install systemd)"
)
needs_sysusers = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers / systemd-tmpfiles are not installed (apt install systemd)",
)


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z]+)=(.*)$", line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2).strip())
    return found


def unit_directives() -> dict[str, list[str]]:
    return directives(UNIT.read_text(encoding="utf-8"))


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False, env=_plain_env())


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return _run(SYSTEMD_ANALYZE, *args)


def _plain_env() -> dict[str, str]:
    """No pager, no colours, no locale surprises in the text we parse."""
    return {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}


def _local_unit(directory: Path, drop_in: Path | None = None) -> Path:
    """The unit, with the installed kiosk path swapped for an executable that exists here (verify checks it), in a
    directory of its own; a drop-in goes to kiosk.service.d/ beside it, where systemd-analyze looks for it."""
    kiosk = shutil.which("kiosk") or str(Path(sys.executable).with_name("kiosk"))
    if not Path(kiosk).is_file():
        kiosk = sys.executable
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(INSTALLED_KIOSK) == 2, "ExecStart and ExecStopPost should both run the installed kiosk"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kiosk.service"
    path.write_text(text.replace(INSTALLED_KIOSK, kiosk), encoding="utf-8")
    if drop_in is not None:
        (directory / "kiosk.service.d").mkdir()
        shutil.copy(drop_in, directory / "kiosk.service.d" / drop_in.name)
    return path


@pytest.fixture(scope="module")
def local_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _local_unit(tmp_path_factory.mktemp("systemd") / "unit")


def _security(unit: Path) -> tuple[float, list[dict[str, str]], str]:
    """Overall exposure (from the text report) and the checks that still cost something (from --json)."""
    text = _analyze("security", "--offline=true", "--no-pager", str(unit))
    assert text.returncode == 0 and text.stderr == "", text.stderr
    m = re.search(r"Overall exposure level for kiosk\.service: (\d+\.\d+) (\w+)", text.stdout)
    assert m, text.stdout[-500:]
    as_json = _analyze("security", "--offline=true", "--no-pager", "--json=short", str(unit))
    assert as_json.returncode == 0 and as_json.stderr == "", as_json.stderr
    left = [
        {"name": c["name"], "exposure": c["exposure"], "description": c["description"]}
        for c in json.loads(as_json.stdout)
        if c.get("exposure") and float(c["exposure"]) > 0
    ]
    return float(m.group(1)), left, m.group(2)


# --- the unit's lines ---------------------------------------------------------------------------------------------


def test_unit_has_the_safety_lines() -> None:
    d = unit_directives()
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["10"]
    assert d["Restart"] == ["on-failure"]
    assert d["StartLimitIntervalSec"] == ["300"] and d["StartLimitBurst"] == ["5"]
    assert d["ExecStart"] == [f"{INSTALLED_KIOSK} --config /etc/face-kiosk/config.yaml run"]
    # The relay is forced off after every stop, crash and watchdog kill, by a process in the same sandbox.
    assert d["ExecStopPost"] == [f"{INSTALLED_KIOSK} --config /etc/face-kiosk/config.yaml door off"]
    assert d["User"] == ["kiosk"] and d["Group"] == ["kiosk"]
    assert d["SupplementaryGroups"] == ["video gpio"]
    assert d["StateDirectory"] == ["face-kiosk"] and d["StateDirectoryMode"] == ["0700"]
    assert d["WorkingDirectory"] == [DATA_DIR]
    assert "OMP_NUM_THREADS=2" in d["Environment"]


def test_restart_prevent_exit_status_is_exactly_the_unfixable_codes() -> None:
    """Taken from kiosk.errors.ExitCode, so renumbering a code breaks this test instead of the restart policy."""
    d = unit_directives()
    assert len(d["RestartPreventExitStatus"]) == 1
    prevent = {int(code) for code in d["RestartPreventExitStatus"][0].split()}
    assert prevent == {int(c) for c in UNFIXABLE}
    # A stalled loop and a camera/GPIO fault are what restarts are for.
    assert int(ExitCode.WATCHDOG) not in prevent and int(ExitCode.HARDWARE) not in prevent


def test_unit_has_the_hardening_lines() -> None:
    d = unit_directives()
    expected = {
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "RestrictSUIDSGID": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateNetwork": ["yes"],
        "IPAddressDeny": ["any"],
        "RestrictAddressFamilies": ["AF_UNIX"],
        "DevicePolicy": ["closed"],
        "ProtectKernelTunables": ["yes"],
        "ProtectKernelModules": ["yes"],
        "ProtectKernelLogs": ["yes"],
        "ProtectControlGroups": ["yes"],
        "ProtectClock": ["yes"],
        "ProtectProc": ["invisible"],
        "RestrictNamespaces": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
        "SystemCallArchitectures": ["native"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
        "SystemCallErrorNumber": ["EPERM"],
        "UMask": ["0077"],
    }
    for key, value in expected.items():
        assert d.get(key) == value, key
    # Cameras (V4L2, media controller, libcamera buffers) and GPIO (gpiochip, gpiomem) by device class.
    assert set(d["DeviceAllow"]) == {
        "char-video4linux rw",
        "char-media rw",
        "char-dma_heap rw",
        "char-gpiochip rw",
        "char-*gpiomem* rw",
    }
    # PrivateDevices= would build a /dev without the camera (and a replugged camera would never come back).
    assert "PrivateDevices" not in d


def test_the_data_directory_is_the_only_writable_path() -> None:
    """ProtectSystem=strict makes everything read-only but the StateDirectory and the socket folder; nothing may
    widen that."""
    writable = ("ReadWritePaths", "CacheDirectory", "LogsDirectory", "RuntimeDirectory", "ConfigurationDirectory")
    for path in DROP_INS:
        d = directives(path.read_text(encoding="utf-8"))
        assert not [k for k in writable if k in d], path.name
        assert d.get("ProtectSystem", ["strict"]) == ["strict"], path.name
    unit = unit_directives()
    assert [k for k in writable if k in unit] == ["RuntimeDirectory"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["StateDirectory"] == [Path(DATA_DIR).name]


def test_the_socket_folder_is_private_to_the_service_user_and_group() -> None:
    """The door screen's sockets (kiosk.screen): /run/face-kiosk, 0750, as screen.runtime_dir in the examples."""
    unit = unit_directives()
    assert unit["RuntimeDirectory"] == ["face-kiosk"] and unit["RuntimeDirectoryMode"] == ["0750"]
    assert "RuntimeDirectoryPreserve" not in unit, "stale sockets go with the service"
    readme = (SYSTEMD_DIR / "README.md").read_text(encoding="utf-8")
    assert "screen.runtime_dir: /run/face-kiosk" in readme


def test_drop_ins_open_only_what_they_are_for() -> None:
    assert {p.name for p in DROP_INS} == {"encryption.conf", "ip-camera.conf", "jetson-gpu.conf", "osdp-serial.conf"}
    enc = directives((SYSTEMD_DIR / "drop-in" / "encryption.conf").read_text(encoding="utf-8"))
    assert enc == {"LoadCredential": ["gallery-key:/etc/face-kiosk/gallery.key"]}
    # The credential name the kiosk reads by default.
    from kiosk.config import GalleryConfig

    assert GalleryConfig().key_credential == "gallery-key"
    ip = directives((SYSTEMD_DIR / "drop-in" / "ip-camera.conf").read_text(encoding="utf-8"))
    assert ip["PrivateNetwork"] == ["no"]
    assert ip["RestrictAddressFamilies"] == ["", "AF_UNIX AF_INET AF_INET6"]
    assert "IPAddressDeny" not in ip and len(ip["IPAddressAllow"]) == 1  # deny-any stays; one address let through
    gpu = directives((SYSTEMD_DIR / "drop-in" / "jetson-gpu.conf").read_text(encoding="utf-8"))
    assert set(gpu) == {"DeviceAllow"}
    serial = directives((SYSTEMD_DIR / "drop-in" / "osdp-serial.conf").read_text(encoding="utf-8"))
    assert serial == {
        "SupplementaryGroups": ["dialout"],
        "DeviceAllow": ["char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw"],
    }


# --- systemd-analyze verify -----------------------------------------------------------------------------------------


@needs_systemd_analyze
@pytest.mark.parametrize("drop_in", [None, *DROP_INS], ids=lambda p: p.name if p else "unit")
def test_systemd_analyze_verify_is_silent(drop_in: Path | None, tmp_path: Path) -> None:
    unit = _local_unit(tmp_path / "unit", drop_in)
    result = _analyze("verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == "", result.stderr + result.stdout


@needs_systemd_analyze
def test_verify_catches_a_typo(local_unit: Path, tmp_path: Path) -> None:
    """The silence above means something: a misspelt key does produce stderr output."""
    broken = tmp_path / "kiosk.service"
    broken.write_text(local_unit.read_text(encoding="utf-8").replace("WatchdogSec=", "WatchDogSec="), encoding="utf-8")
    result = _analyze("verify", str(broken))
    assert "WatchDogSec" in result.stderr


@needs_systemd_analyze
def test_verify_reads_the_drop_ins(tmp_path: Path) -> None:
    """A misspelt key in a drop-in beside the unit is reported too, so the drop-in runs above were really read."""
    bad = tmp_path / "bad.conf"
    bad.write_text("[Service]\nLoadCredentail=gallery-key:/etc/face-kiosk/gallery.key\n", encoding="utf-8")
    result = _analyze("verify", str(_local_unit(tmp_path / "unit", bad)))
    assert "LoadCredentail" in result.stderr


# --- systemd-analyze security -------------------------------------------------------------------------------------


@needs_systemd_analyze
def test_security_exposure_is_ok(local_unit: Path, tmp_path: Path) -> None:
    score, left, verdict = _security(local_unit)
    report = {
        "command": "systemd-analyze security --offline=true systemd/kiosk.service",
        "score": score,
        "verdict": verdict,
        "exposures_left": left,
    }
    (tmp_path / "security.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nsystemd-analyze security --offline=true: {score} {verdict}")
    for c in left:
        print(f"  {c['exposure']}  {c['name']}  ({c['description']})")
    assert score <= MAX_EXPOSURE, left
    # What is left is what the README explains: camera/GPIO devices, supplementary groups, AF_UNIX for sd_notify,
    # no user namespace, full /proc (GPIO libraries read /proc/cpuinfo), the host's root directory.
    assert {c["name"] for c in left} <= {
        "RootDirectory=/RootImage=",
        "SupplementaryGroups=",
        "PrivateDevices=",
        "DeviceAllow=",
        "RestrictAddressFamilies=~AF_UNIX",
        "ProcSubset=",
        "PrivateUsers=",
    }, left


@needs_systemd_analyze
@pytest.mark.parametrize("drop_in", DROP_INS, ids=lambda p: p.name)
def test_security_exposure_with_each_drop_in(drop_in: Path, local_unit: Path, tmp_path: Path) -> None:
    base, _, _ = _security(local_unit)
    score, left, verdict = _security(_local_unit(tmp_path / "unit", drop_in))
    print(f"\nwith {drop_in.name}: {score} {verdict}")
    assert score <= MAX_EXPOSURE, left
    if drop_in.name == "ip-camera.conf":
        # The parser sees the difference: the network costs something, and it is the only thing that does.
        assert score > base
        assert "PrivateNetwork=" in {c["name"] for c in left}
    else:
        assert score == base


# --- sysusers / tmpfiles --------------------------------------------------------------------------------------------


def _passwd(root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    users = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()}
    groups = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/group").read_text().splitlines()}
    return users, groups


@needs_sysusers
def test_sysusers_creates_the_service_user_and_admin_group(tmp_path: Path) -> None:
    """Applied to an empty root (--root), never to this machine."""
    (tmp_path / "etc").mkdir()
    result = _run("systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS))
    assert result.returncode == 0, result.stderr
    assert "ignoring" not in result.stderr.lower() and "fail" not in result.stderr.lower(), result.stderr
    users, groups = _passwd(tmp_path)
    _, _, uid, gid, _, home, shell = users["kiosk"]
    assert 0 < int(uid) < 1000 and groups["kiosk"][2] == gid, "a system user with its own group"
    assert home == DATA_DIR and shell == "/usr/sbin/nologin"
    assert "kiosk-admin" in groups and groups["kiosk-admin"][3] == "", "the admin group starts empty"
    from kiosk.config import AdminConfig

    assert AdminConfig().group == "kiosk-admin"
    for g in ("video", "gpio"):  # SupplementaryGroups= fails the unit if a group is missing
        assert "kiosk" in groups[g][3].split(","), g


@needs_sysusers
def test_sysusers_rejects_a_broken_line(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    bad = tmp_path / "bad.conf"
    bad.write_text(SYSUSERS.read_text(encoding="utf-8").replace("u kiosk", "U kiosk"), encoding="utf-8")
    result = _run("systemd-sysusers", f"--root={tmp_path}", str(bad))
    assert result.returncode != 0 and "Unknown command type" in result.stderr


@needs_sysusers
def test_tmpfiles_creates_a_private_data_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    assert _run("systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)).returncode == 0
    result = _run("systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES))
    if os.geteuid() == 0:
        assert result.returncode == 0 and result.stderr == "", result.stderr
    else:  # only the chown needs root: every complaint must be about that
        assert all("fchownat()" in ln and "Operation not permitted" in ln for ln in result.stderr.splitlines()), (
            result.stderr
        )
    data = tmp_path / DATA_DIR.lstrip("/")
    assert data.is_dir() and data.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        users, _ = _passwd(tmp_path)
        assert data.stat().st_uid == int(users["kiosk"][2])
    assert (tmp_path / "etc/face-kiosk").is_dir()


# --- the sandbox's seccomp filters, rehearsed -----------------------------------------------------------------------
# systemd is not PID 1 here, so the unit cannot be started. What can be rehearsed is the part that could break the
# kiosk silently: SystemCallFilter= (expanded by systemd-analyze itself), MemoryDenyWriteExecute= and
# RestrictAddressFamilies=, installed with libseccomp exactly as the unit asks, around the real `kiosk run`.

SANDBOX = r"""
import ctypes, ctypes.util, errno, os, re, subprocess, sys, socket

def groups():
    cmd = ["systemd-analyze", "syscall-filter", "--no-pager"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    g, cur = {}, None
    for line in out.splitlines():
        if re.match(r"^@[\w-]+$", line):
            cur = g.setdefault(line, [])
        elif line.startswith("    ") and cur is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                cur.append(item)
        elif not line.strip():
            cur = None
    return g

def expand(names, g):
    out = set()
    for n in names:
        if n.startswith("@"):
            out |= expand(g[n], g)
        else:
            out.add(n)
    return out

SCMP_ACT_ALLOW = 0x7FFF0000
def ERRNO(e): return 0x00050000 | (e & 0xFFFF)
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
SCMP_CMP_NE, SCMP_CMP_MASKED_EQ = 1, 7

lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)
]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_release.argtypes = [ctypes.c_void_p]

def rule(ctx, action, name, *cmps):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # __NR_SCMP_ERROR: not a syscall on this architecture
        return
    arr = (Cmp * max(1, len(cmps)))(*cmps)
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
    assert rc == 0, (name, rc)

def load(ctx):
    assert lib.seccomp_load(ctx) == 0
    lib.seccomp_release(ctx)

def main(unit, argv):
    d = {}
    for line in open(unit):
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m: d.setdefault(m.group(1), []).append(m.group(2))
    g = groups()
    allowed = set()
    for i, v in enumerate(d["SystemCallFilter"]):
        if v.startswith("~"):
            allowed -= expand(v[1:].split(), g)
        else:
            if i == 0: allowed |= expand(["@default"], g)
            allowed |= expand(v.split(), g)
    err = getattr(errno, d["SystemCallErrorNumber"][0])
    # 2: MemoryDenyWriteExecute, as systemd does it
    if d.get("MemoryDenyWriteExecute") == ["yes"]:
        import mmap
        W, X = mmap.PROT_WRITE, mmap.PROT_EXEC
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        rule(ctx, ERRNO(errno.EPERM), "mmap", Cmp(2, SCMP_CMP_MASKED_EQ, W | X, W | X))
        rule(ctx, ERRNO(errno.EPERM), "mprotect", Cmp(2, SCMP_CMP_MASKED_EQ, X, X))
        rule(ctx, ERRNO(errno.EPERM), "pkey_mprotect", Cmp(2, SCMP_CMP_MASKED_EQ, X, X))
        rule(ctx, ERRNO(errno.EPERM), "shmat", Cmp(2, SCMP_CMP_MASKED_EQ, 0o100000, 0o100000))
        load(ctx)
    # 3: RestrictAddressFamilies (allow list): socket() of any other family fails with EAFNOSUPPORT
    fams = [getattr(socket, f) for v in d.get("RestrictAddressFamilies", []) for f in v.split()]
    if fams:
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        # families are small integers: deny each one not allowed, up to AF_MAX
        for fam in range(0, 50):
            if fam not in fams:
                rule(ctx, ERRNO(errno.EAFNOSUPPORT), "socket", Cmp(0, 4, fam, 0))  # SCMP_CMP_EQ = 4
        load(ctx)
    # last (it forbids seccomp() itself): the system call allow list
    ctx = lib.seccomp_init(ERRNO(err))
    for name in sorted(allowed):
        rule(ctx, SCMP_ACT_ALLOW, name)
    load(ctx)
    os.execv(argv[0], argv)


main(sys.argv[1], sys.argv[2:])
"""
needs_seccomp = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None or ctypes.util.find_library("seccomp") is None,
    reason="needs systemd-analyze and libseccomp (apt install systemd libseccomp2)",
)


def _sandboxed(tmp_path: Path, *argv: str) -> list[str]:
    script = tmp_path / "sandbox.py"
    script.write_text(SANDBOX, encoding="utf-8")
    return [sys.executable, str(script), str(UNIT), sys.executable, *argv]


@needs_seccomp
def test_the_filters_deny_what_the_unit_says(tmp_path: Path) -> None:
    probe = (
        "import mmap, os, socket\n"
        "for name, f in [('setuid', lambda: os.setuid(0)), ('affinity', lambda: os.sched_setaffinity(0, {0})),\n"
        "        ('wx', lambda: mmap.mmap(-1, 4096, prot=7)), ('inet', lambda: socket.socket(socket.AF_INET))]:\n"
        "    try:\n        f(); print(name, 'allowed')\n"
        "    except OSError as e:\n        print(name, e.errno)\n"
        "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); print('unix ok')\n"
    )
    out = subprocess.run(_sandboxed(tmp_path, "-c", probe), capture_output=True, text=True, timeout=60, check=True)
    import errno

    assert out.stdout.split("\n")[:5] == [
        f"setuid {errno.EPERM}", f"affinity {errno.EPERM}", f"wx {errno.EPERM}", f"inet {errno.EAFNOSUPPORT}",
        "unix ok",
    ], out.stdout + out.stderr  # fmt: skip


@pytest.mark.slow
@needs_seccomp
def test_kiosk_run_and_door_off_work_inside_the_filters(faces_dir: Path, tmp_path: Path) -> None:
    """The real door loop under the unit's filters: models load (onnxruntime, OpenCV, numpy), the camera (a clip)
    is read, a face is granted, READY and WATCHDOG reach a NOTIFY_SOCKET, SIGTERM stops it cleanly with the door
    locked, and `kiosk door off` (ExecStopPost=) runs too. No library may have met an EPERM on the way."""
    import cv2
    import numpy as np

    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\ndoor:\n  driver: simulated\n  pulse_s: 0.2\ncamera:\n  loop_replay: true\n"
        "liveness:\n  mode: off\n"
    )
    colin = sorted((faces_dir / "lfw/images/Colin_Powell").glob("*.jpg"))
    kiosk = [sys.executable, "-m", "kiosk", "--config", str(cfg)]
    enrol = subprocess.run([*kiosk, "enroll", "Colin", str(colin[0]), str(colin[1])], capture_output=True, timeout=120)
    assert enrol.returncode == 0, enrol.stderr
    clip = tmp_path / "door.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (640, 480))
    photo = cv2.imread(str(colin[3]))
    assert photo is not None
    face = cv2.resize(photo, None, fx=1.5, fy=1.5)
    for i in range(20):
        frame = np.full((480, 640, 3), 110, np.uint8)
        h, w = face.shape[:2]
        frame[(480 - h) // 2 : (480 - h) // 2 + h, (640 - w) // 2 + i : (640 - w) // 2 + i + w] = face
        writer.write(frame)
    writer.release()

    import socket

    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(1.0)
        env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="2000000")
        argv = ["-m", "kiosk", "--config", str(cfg), "--log-level", "INFO", "run", "--source", str(clip)]
        proc = subprocess.Popen(
            _sandboxed(tmp_path, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        messages: list[str] = []
        lines: list[str] = []
        assert proc.stderr is not None
        stderr = proc.stderr
        reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(TimeoutError):
                    messages += sock.recv(4096).decode().splitlines()
                granted = any("decision outcome=granted" in ln for ln in list(lines))
                if granted and "READY=1" in messages and "WATCHDOG=1" in messages:
                    break
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        reader.join(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 0, err[-2000:]
    assert "READY=1" in messages and "WATCHDOG=1" in messages, messages
    assert "decision outcome=granted" in err and "name=Colin" in err, out[-2000:] + err[-2000:]
    last_door = [ln for ln in err.splitlines() if "door: " in ln][-1]
    assert "LOCKED" in last_door
    off = subprocess.run(_sandboxed(tmp_path, *kiosk[1:], "door", "off"), capture_output=True, text=True, timeout=60)
    assert off.returncode == 0, off.stderr
    for text in (err, off.stderr):
        assert "Operation not permitted" not in text and "Address family not supported" not in text, text[-2000:]


# --- kiosk-web.service: the web process ------------------------------------------------------------------------------
# A network service: TCP listeners and Unix sockets, no devices, the same user and state directory as the loop.

WEB_UNIT = SYSTEMD_DIR / "kiosk-web.service"
WEB_MAX_EXPOSURE = 1.5


def _local_web_unit(directory: Path) -> Path:
    kiosk = shutil.which("kiosk") or str(Path(sys.executable).with_name("kiosk"))
    if not Path(kiosk).is_file():
        kiosk = sys.executable
    text = WEB_UNIT.read_text(encoding="utf-8")
    assert text.count(INSTALLED_KIOSK) == 1, "ExecStart runs the installed kiosk"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kiosk-web.service"
    path.write_text(text.replace(INSTALLED_KIOSK, kiosk), encoding="utf-8")
    return path


def test_web_unit_has_the_lifecycle_and_identity_lines() -> None:
    d = directives(WEB_UNIT.read_text(encoding="utf-8"))
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == [f"{INSTALLED_KIOSK} --config /etc/face-kiosk/config.yaml web"]
    assert d["Restart"] == ["on-failure"]
    assert {int(c) for c in d["RestartPreventExitStatus"][0].split()} == {int(c) for c in UNFIXABLE}
    assert d["User"] == ["kiosk"] and d["Group"] == ["kiosk"]  # the loop's user: same gallery, same sockets
    assert d["StateDirectory"] == ["face-kiosk"] and d["StateDirectoryMode"] == ["0700"]
    assert "kiosk.service" in d["After"][0].split() and "Requires" not in d  # a dead loop is shown, not fatal
    assert "SupplementaryGroups" not in d and "DeviceAllow" not in d  # no camera, no GPIO


def test_web_unit_has_the_hardening_lines() -> None:
    d = directives(WEB_UNIT.read_text(encoding="utf-8"))
    expected = {
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "RestrictSUIDSGID": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "DevicePolicy": ["closed"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "ProtectKernelTunables": ["yes"],
        "ProtectKernelModules": ["yes"],
        "ProtectKernelLogs": ["yes"],
        "ProtectControlGroups": ["yes"],
        "ProtectClock": ["yes"],
        "ProtectProc": ["invisible"],
        "RestrictNamespaces": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
        "SystemCallArchitectures": ["native"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
        "SystemCallErrorNumber": ["EPERM"],
        "UMask": ["0077"],
    }
    for key, value in expected.items():
        assert d.get(key) == value, key
    assert "PrivateNetwork" not in d  # it serves the network


@needs_systemd_analyze
def test_web_unit_verify_is_silent(tmp_path: Path) -> None:
    result = _analyze("verify", str(_local_web_unit(tmp_path / "unit")))
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr + result.stdout


@needs_systemd_analyze
def test_web_unit_security_exposure(tmp_path: Path) -> None:
    unit = _local_web_unit(tmp_path / "unit")
    text = _analyze("security", "--offline=true", "--no-pager", str(unit))
    assert text.returncode == 0 and text.stderr == "", text.stderr
    m = re.search(r"Overall exposure level for kiosk-web\.service: (\d+\.\d+) (\w+)", text.stdout)
    assert m, text.stdout[-500:]
    as_json = _analyze("security", "--offline=true", "--no-pager", "--json=short", str(unit))
    left = {c["name"]: c["exposure"] for c in json.loads(as_json.stdout) if c.get("exposure") and float(c["exposure"])}
    print(f"\nkiosk-web.service: systemd-analyze security --offline=true: {m.group(1)} {m.group(2)}")
    for name, exposure in left.items():
        print(f"  {exposure}  {name}")
    assert float(m.group(1)) <= WEB_MAX_EXPOSURE, left
    # What is left is what systemd/README.md explains for the web unit: it is a network service.
    assert set(left) <= {
        "RootDirectory=/RootImage=",
        "RestrictAddressFamilies=~AF_UNIX",
        "RestrictAddressFamilies=~AF_(INET|INET6)",
        "PrivateNetwork=",
        "IPAddressDeny=",
        "PrivateUsers=",
        "ProcSubset=",
        "DeviceAllow=",
    }, left


def _sandboxed_web(tmp_path: Path, *argv: str) -> list[str]:
    script = tmp_path / "sandbox.py"
    script.write_text(SANDBOX, encoding="utf-8")
    return [sys.executable, str(script), str(WEB_UNIT), sys.executable, *argv]


@pytest.mark.slow
@needs_seccomp
def test_kiosk_web_works_inside_the_web_units_filters(tmp_path: Path) -> None:
    """`kiosk web user add` (argon2id) and `kiosk web` under the web unit's system call filter, W^X memory and address
    families: a self-signed certificate is made (cryptography), READY reaches NOTIFY_SOCKET, an HTTPS login is
    checked (argon2, TLS), SIGTERM stops it cleanly; no library meets an EPERM on the way."""
    import http.client
    import socket
    import ssl

    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nweb:\n  listen: ['https://127.0.0.1:0']\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")} | {"PYTHONPATH": str(ROOT)}
    password = "correct horse battery"
    add = subprocess.run(
        _sandboxed_web(tmp_path, "-m", "kiosk", "-c", str(cfg), "web", "user", "add", "ada", "--role", "admin"),
        input=password + "\n", capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(1.0)
        argv = _sandboxed_web(tmp_path, "-m", "kiosk", "-c", str(cfg), "web")
        with child_process(argv, env | {"NOTIFY_SOCKET": str(notify)}) as web:
            proc = web.proc
            messages: list[str] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None and "READY=1" not in messages:
                with contextlib.suppress(TimeoutError):
                    messages += sock.recv(4096).decode().splitlines()
            assert "READY=1" in messages, web.text()
            port = web.wait_for(r"on https://127\.0\.0\.1:(\d+)/", timeout_s=10)  # printed before READY
            assert port is not None, web.text()
            context = ssl.create_default_context(cafile=str(tmp_path / "data" / "tls" / "cert.pem"))
            conn = http.client.HTTPSConnection("127.0.0.1", int(port.group(1)), context=context, timeout=10)
            conn.request(
                "POST", "/api/session", body=json.dumps({"username": "ada", "password": password}),
                headers={"content-type": "application/json"},
            )  # fmt: skip
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["account"]["role"] == "admin"
            cookie = (r.getheader("set-cookie") or "").split(";")[0]
            # The System page runs `kiosk check` in the model worker: a child process started (multiprocessing
            # spawn) inside the same filters, which loads onnxruntime and the models under W^X.
            conn.request("GET", "/api/system", headers={"cookie": cookie})
            r = conn.getresponse()
            system = json.loads(r.read())
            assert r.status == 200, system
            loaded = {c["check"]: c["ok"] for c in system["checks"] if c["check"].startswith("model")}
            assert loaded == {"model detector": True, "model recognizer": True}, system["checks"]
            conn.close()
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, web.text()
        lines = web.lines
    err = "".join(lines) + add.stderr
    assert "Operation not permitted" not in err and "Address family not supported" not in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]


@needs_seccomp
def test_the_web_units_filters_deny_what_it_says(tmp_path: Path) -> None:
    probe = (
        "import mmap, os, socket\n"
        "for name, f in [('setuid', lambda: os.setuid(0)), ('wx', lambda: mmap.mmap(-1, 4096, prot=7)),\n"
        "        ('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),\n"
        "        ('inet6', lambda: socket.socket(socket.AF_INET6).close())]:\n"
        "    try:\n        f(); print(name, 'allowed')\n"
        "    except OSError as e:\n        print(name, e.errno)\n"
    )
    out = subprocess.run(_sandboxed_web(tmp_path, "-c", probe), capture_output=True, text=True, timeout=60, check=True)
    import errno

    assert out.stdout.split("\n")[:4] == [
        f"setuid {errno.EPERM}", f"wx {errno.EPERM}", f"netlink {errno.EAFNOSUPPORT}", "inet6 allowed",
    ], out.stdout + out.stderr  # fmt: skip


# -- the fleet's units: the hub, and a door's fleet agent (docs/fleet.md) ------------------------------------------

FLEET_UNITS = {"kiosk-hub.service": "hub serve", "kiosk-fleet.service": "fleet run"}


def _local_unit_copy(name: str, directory: Path) -> Path:
    kiosk = shutil.which("kiosk") or str(Path(sys.executable).with_name("kiosk"))
    if not Path(kiosk).is_file():
        kiosk = sys.executable
    text = (SYSTEMD_DIR / name).read_text(encoding="utf-8")
    assert text.count(INSTALLED_KIOSK) == 1, "ExecStart runs the installed kiosk"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text.replace(INSTALLED_KIOSK, kiosk), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(FLEET_UNITS))
def test_fleet_units_run_their_command_as_the_service_user_with_no_devices(name: str) -> None:
    d = directives((SYSTEMD_DIR / name).read_text(encoding="utf-8"))
    assert d["ExecStart"] == [f"{INSTALLED_KIOSK} --config /etc/face-kiosk/config.yaml {FLEET_UNITS[name]}"]
    assert d["Restart"] == ["on-failure"]
    assert {int(c) for c in d["RestartPreventExitStatus"][0].split()} == {int(c) for c in UNFIXABLE}
    assert d["User"] == ["kiosk"] and d["Group"] == ["kiosk"]  # the loop's user: same gallery, same sockets
    assert "SupplementaryGroups" not in d and "DeviceAllow" not in d  # no camera, no GPIO, no relay
    assert d["PrivateDevices"] == ["yes"] and d["DevicePolicy"] == ["closed"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"] and "PrivateNetwork" not in d
    for key, value in {"NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "MemoryDenyWriteExecute": "yes", "UMask": "0077"}.items():  # fmt: skip
        assert d.get(key) == [value], key
    assert d["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


def test_the_door_loop_keeps_no_network_its_fleet_agent_has_it() -> None:
    loop = directives(UNIT.read_text(encoding="utf-8"))
    assert loop["PrivateNetwork"] == ["yes"] and loop["RestrictAddressFamilies"] == ["AF_UNIX"]


@needs_systemd_analyze
@pytest.mark.parametrize("name", sorted(FLEET_UNITS))
def test_fleet_units_verify_and_exposure(name: str, tmp_path: Path) -> None:
    unit = _local_unit_copy(name, tmp_path / "unit")
    result = _analyze("verify", str(unit))
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr + result.stdout
    text = _analyze("security", "--offline=true", "--no-pager", str(unit))
    assert text.returncode == 0 and text.stderr == "", text.stderr
    m = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+) (\w+)", text.stdout)
    assert m, text.stdout[-500:]
    print(f"\n{name}: systemd-analyze security --offline=true: {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= WEB_MAX_EXPOSURE  # network services, like the web unit
