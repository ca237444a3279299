from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kiosk.config import Config, iter_fields, load_config, parse_config
from kiosk.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    cfg = parse_config({})
    assert cfg.models.detector == "yunet"
    assert cfg.recognition.threshold is None
    assert cfg.gallery_path.name == "gallery.db"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"recognition": {"threshold": 1.4}}, "recognition.threshold: must be within -1.0..1.0, got 1.4"),
        ({"recogniton": {}}, "recogniton: unknown key"),
        ({"recognition": {"treshold": 0.5}}, "recognition.treshold: unknown key"),
        ({"detection": {"select": "biggest"}}, "detection.select: must be one of largest, central, all"),
        ({"detection": {"input_size": 100}}, "detection.input_size: must be a multiple of 32"),
        ({"detection": {"input_size": "320"}}, "detection.input_size: must be an integer"),
        ({"runtime": {"intra_op_threads": 0}}, "runtime.intra_op_threads: must be within 1..64"),
        ({"runtime": {"providers": "CPUExecutionProvider"}}, "runtime.providers: must be a list"),
        ({"runtime": {"providers": [1]}}, "runtime.providers[0]: must be a string"),
        (
            {"quality": {"min_brightness": 230}},
            "quality.min_brightness: must be below quality.max_brightness",
        ),
        ({"quality": 3}, "quality: must be a mapping"),
        ({"logging": {"level": "LOUD"}}, "logging.level: must be one of"),
        ({"enroll": {"max_templates": True}}, "enroll.max_templates: must be an integer"),
        ([1, 2], "top level must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_example_config_documents_every_key_and_parses() -> None:
    path = ROOT / "config.example.yaml"
    data = yaml.safe_load(path.read_text())
    cfg = parse_config(data, source=path)
    flat: set[str] = set()

    def walk(d: dict[str, object], prefix: str = "") -> None:
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(v, key)
            else:
                flat.add(key)

    walk(data)
    keys = {k for k, _, _ in iter_fields()}
    assert keys == flat, f"example config out of sync: missing {keys - flat}, extra {flat - keys}"
    # Every value in the example is the default (the example documents defaults).
    defaults = parse_config({}, source=path)
    assert cfg == defaults


def test_camera_index_may_be_written_as_a_number() -> None:
    assert parse_config(yaml.safe_load("camera:\n  source: 0\n")).camera.source == "0"
    with pytest.raises(ConfigError, match=r"camera\.source: must be a string, got True"):
        parse_config({"camera": {"source": True}})


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "kiosk.yaml"
    f.parent.mkdir()
    f.write_text("data_dir: data\ngallery:\n  path: g/gallery.db\ncamera:\n  source: clips/door.mp4\n")
    cfg = load_config(f)
    assert cfg.data_dir == f.parent / "data"
    assert cfg.camera.source == str(f.parent / "clips" / "door.mp4")
    for kept in ("0", "/dev/video2", "rtsp://cam.local/stream", "picamera"):
        assert parse_config({"camera": {"source": kept}}).camera.source == kept
    assert cfg.gallery_path == f.parent / "g" / "gallery.db"
    assert cfg.origin == f


def test_env_var_and_missing_and_invalid_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "k.yaml"
    good.write_text("recognition:\n  margin: 0.1\n")
    monkeypatch.setenv("KIOSK_CONFIG", str(good))
    assert load_config().recognition.margin == 0.1
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("recognition: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert isinstance(load_config(empty), Config)


def test_exponent_numbers_are_numbers_even_where_yaml_reads_a_string() -> None:
    """PyYAML reads `1e-4` (no dot) as a string; a float key takes it as the number it means, nothing else."""
    import yaml

    raw = yaml.safe_load("recognition:\n  fpir: 1e-4\n  margin: 5E-2\n")
    assert isinstance(raw["recognition"]["fpir"], str)
    cfg = parse_config(raw)
    assert cfg.recognition.fpir == 1e-4 and cfg.recognition.margin == 0.05
    for bad in ("1e", "e-4", "1e-4x", "0x1p-4"):
        with pytest.raises(ConfigError, match=r"recognition\.fpir: must be a number"):
            parse_config({"recognition": {"fpir": bad}})
    with pytest.raises(ConfigError, match=r"recognition\.fpir: must be within"):
        parse_config({"recognition": {"fpir": "1e3"}})
