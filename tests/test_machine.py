"""``kiosk.lab.machine``: the one machine description every results JSON records (parsed from sample cpuinfo texts)."""

from __future__ import annotations

from pathlib import Path

from kiosk.lab import machine

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512_vnni amx_tile
bogomips\t: 5600.00

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512_vnni amx_tile
"""

EPYC = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma
"""

RASPBERRY_PI_4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41

processor\t: 1
Features\t: fp asimd evtstrm crc32 cpuid

Hardware\t: BCM2835
Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_x86_cpuinfo() -> None:
    info = machine.parse_cpuinfo(XEON)
    assert info["model name"] == "Intel(R) Xeon(R) Processor @ 2.80GHz" and info["processor"] == "0"
    assert machine.cpu_flags(info) == ["avx2", "avx512f", "avx512_vnni", "fma"]
    assert machine.has_vnni(info) is True
    epyc = machine.parse_cpuinfo(EPYC)
    assert machine.cpu_name(epyc) == "AMD EPYC 7B13" and machine.cpu_flags(epyc) == ["avx2", "fma"]
    assert machine.has_vnni(epyc) is False


def test_arm_cpuinfo() -> None:
    info = machine.parse_cpuinfo(RASPBERRY_PI_4)
    assert machine.cpu_name(info) == "Raspberry Pi 4 Model B Rev 1.4 (BCM2835)"
    assert machine.cpu_flags(info) == ["neon"]  # asimd is NEON; no asimddp (int8 dot product) on a Cortex-A72
    assert machine.has_vnni(info) is False


def test_unreadable_cpuinfo(tmp_path: Path) -> None:
    assert machine.read_cpuinfo(tmp_path / "missing") == {}
    assert machine.has_vnni({}) is None
    assert machine.describe({})["flags"] == []


def test_describe_records_flags_cores_and_load() -> None:
    m = machine.describe(machine.parse_cpuinfo(XEON))
    assert m["cpu"] == "Intel(R) Xeon(R) Processor @ 2.80GHz" and m["flags"] == [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "fma",
    ]
    assert m.keys() == {"cpu", "cores", "cores_usable", "flags", "arch", "os", "loadavg_start"}
    here = machine.describe()
    assert set(here["flags"]) <= set(machine.CPU_FLAGS)
    assert here["cores"] >= 1 and here["os"] and here["arch"]
    assert here["loadavg_start"] is None or len(here["loadavg_start"]) == 3


def test_versions_name_the_packages_behind_a_figure() -> None:
    v = machine.versions()
    assert {"python", "onnxruntime", "opencv", "numpy", "face_kiosk"} <= v.keys() and v["numpy"]
    assert machine.package_version("no-such-package-kiosk") is None
