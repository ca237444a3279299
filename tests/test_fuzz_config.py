"""Bad input, part 1: property-based and fuzz tests of the config file (issue #6, part 6).

Every document, byte string or mutation of a valid config gives either a ``Config`` or one ``ConfigError`` line that
names the offending key; through the CLI, exit CONFIG and one ``kiosk: error:`` line on stderr. Never a traceback,
never an internal error, never unbounded memory (YAML alias bombs, megabyte strings, /dev/zero).

``KIOSK_FUZZ_EXAMPLES=N`` runs N examples per property instead of the defaults (the CLI property runs N/5).
Each module prints the number of examples it ran; ``--hypothesis-show-statistics`` gives them per test.
"""

from __future__ import annotations

import dataclasses
import math
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from kiosk.config import Config, iter_fields, load_config, parse_config
from kiosk.errors import ConfigError, ExitCode
from tests.fuzzing import _Counter, fuzz, fuzz_counter_fixture  # noqa: F401 (the autouse fixture)


def one_line(message: str) -> None:
    assert message, "empty error message"
    assert "\n" not in message and "\r" not in message, f"error message is not one line: {message!r}"
    assert len(message) < 400, f"error message is {len(message)} characters long"


# -- a valid config and its leaves -------------------------------------------------------------------------------


def _leaves() -> dict[str, tuple[Any, Any]]:
    return {path: (default, meta) for path, default, meta in iter_fields()}


LEAVES = _leaves()
SECTIONS = sorted({p.rsplit(".", 1)[0] for p in LEAVES if "." in p})


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def valid_document() -> dict[str, Any]:
    """Every key with its default written out, as a YAML file would hold it."""
    doc: dict[str, Any] = {}
    for path, (default, _) in LEAVES.items():
        if default is None or isinstance(default, dataclasses.Field) or default is dataclasses.MISSING:
            continue
        *parents, leaf = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _plain(default)
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def test_valid_document_parses() -> None:
    cfg = parse_config(valid_document())
    assert cfg == dataclasses.replace(parse_config({}), origin=None)


# -- strategies --------------------------------------------------------------------------------------------------

ugly_text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "a\nb", "\u2028", "\u202egnp.exe", "~", "~nobody/x", "../../etc", "0", "-1", "on", "off", "nan"]
)
numbers = (
    st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, -1, 1, 2**63, -(2**63), 10**400, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf])
)
scalars = st.none() | st.booleans() | numbers | ugly_text
yaml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ugly_text | st.integers(), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid document with one thing broken: (document, the key path the error must name)."""
    doc = valid_document()
    kind = draw(st.sampled_from(["leaf", "leaf", "leaf", "unknown", "section"]))
    if kind == "leaf":
        path = draw(st.sampled_from(sorted(LEAVES)))
        _set(doc, path, draw(yaml_values))
        return doc, path
    if kind == "unknown":
        where = draw(st.sampled_from(["", *SECTIONS]))
        key = draw(ugly_text.filter(lambda k: k not in {p.rsplit(".", 1)[-1] for p in LEAVES} | set(SECTIONS)))
        node = doc
        for p in where.split(".") if where else []:
            node = node.setdefault(p, {})
        node[key] = draw(yaml_values)
        return doc, key
    section = draw(st.sampled_from(SECTIONS))
    _set(doc, section, draw(scalars | st.lists(scalars, max_size=3)))
    return doc, section


def _check_parse(doc: Any, key: str | None = None) -> Config | None:
    try:
        return parse_config(doc)
    except ConfigError as err:
        message = str(err)
        one_line(message)
        if key is not None:
            shown = key if key.isprintable() and len(key) <= 60 else None
            if shown is not None:
                assert shown in message, f"{message!r} does not name {key!r}"
        return None


# -- properties --------------------------------------------------------------------------------------------------


@fuzz(300)
@given(yaml_values)
@example({"recognition": {"threshold": math.nan}})  # NaN passed every range check
@example({"quality": {"min_sharpness": math.inf}})  # inf passed the open-ended range
@example({"recognition": {"threshold": 10**400}})  # float() of the int raised OverflowError
@example({"recognition": {"threshold": 10**5000}})  # its repr raised ValueError (over 4300 digits)
@example({"a\nb": 1})  # the unknown key was printed raw: a two-line message
@example({"data_dir": "a\x00b"})  # accepted, then a ValueError (embedded null byte) in every command
def test_any_document_gives_config_or_one_line_error(fuzz_counter: _Counter, doc: Any) -> None:
    fuzz_counter.add(Path(__file__).stem)
    _check_parse(doc)


@fuzz(300)
@given(mutated())
def test_mutated_valid_config_names_the_key(fuzz_counter: _Counter, case: tuple[dict[str, Any], str]) -> None:
    fuzz_counter.add(Path(__file__).stem)
    doc, key = case
    cfg = _check_parse(doc, key)
    if cfg is not None:  # accepted: every number in it is finite
        for path, _, _ in iter_fields():
            value: Any = cfg
            for part in path.split("."):
                value = getattr(value, part)
            if isinstance(value, float):
                assert math.isfinite(value), path


@fuzz(200)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
@example(b"")
@example(b"\xff\xfe\x00d\x00a")  # UTF-16 with a BOM
@example(b"a: \x00\n")  # a NUL: PyYAML's ReaderError message spanned two lines
@example(b"a: " + b"[" * 3000 + b"]" * 3000)  # PyYAML's composer recursed past the interpreter's limit
@example(b"recognition:\n  threshold: " + b"9" * 5000)  # int() of 5000 digits raised ValueError inside PyYAML
@example(b"x: !!python/object/apply:os.system ['true']\n")
def test_any_file_gives_config_or_one_line_error(fuzz_counter: _Counter, tmp_path: Path, raw: bytes) -> None:
    fuzz_counter.add(Path(__file__).stem)
    f = tmp_path / "kiosk.yaml"
    f.write_bytes(raw)
    try:
        load_config(f)
    except ConfigError as err:
        one_line(str(err))


@fuzz(40, share=0.2)
@given(mutated() | yaml_values.map(lambda v: (v, "")))
def test_cli_refuses_a_bad_config_with_exit_config(
    fuzz_counter: _Counter, tmp_path: Path, cli: Any, case: tuple[Any, str]
) -> None:
    fuzz_counter.add(Path(__file__).stem)
    doc, _ = case
    f = tmp_path / "kiosk.yaml"
    try:
        f.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
    except yaml.YAMLError:
        return  # not representable as YAML (PyYAML cannot write every float/int combination)
    try:
        load_config(f)
    except ConfigError:
        pass
    else:
        return  # a valid config: the command would run (with the document's data_dir); not this test's business
    # `events` reads nothing before the config is loaded: the error is the config's.
    code, out, err = cli("-c", str(f), "events", "--limit", "1")
    assert code == ExitCode.CONFIG, err
    assert out == ""
    assert err.startswith("kiosk: error: ") and err.count("\n") == 1, err
    one_line(err.rstrip("\n"))


# -- YAML bombs and other regressions ----------------------------------------------------------------------------


def _billion_laughs(levels: int = 9) -> list[str]:
    """Anchors a0..a8: a0 is nine strings, each next one nine aliases of the one before (9^9 strings expanded)."""
    anchors = ["&a0 [" + ", ".join(['"lol"'] * 9) + "]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return anchors


def test_billion_laughs_under_a_known_key_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """safe_load shares aliased nodes (no expansion), but the error message printed the value: 9^9 strings, 300 MB
    and seconds of CPU. The message is now a bounded repr."""
    f = tmp_path / "bomb.yaml"
    # The anchors live under `logging`, which is checked after `runtime`: the bomb reaches the providers check.
    f.write_text(f"logging:\n  level: [{', '.join(_billion_laughs())}]\nruntime:\n  providers: [*a8]\n")
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as err:
            load_config(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_line(str(err.value))
    assert str(err.value).startswith("runtime.providers[0]: must be a string")
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_billion_laughs_parsed_directly(tmp_path: Path) -> None:
    data = yaml.safe_load("[" + ", ".join(_billion_laughs()) + "]")
    tracemalloc.start()
    try:
        for key in ("providers", "intra_op_threads"):
            with pytest.raises(ConfigError) as err:
                parse_config({"runtime": {key: [data[8]]}})
            one_line(str(err.value))
            assert str(err.value).startswith(f"runtime.{key}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "deep.yaml"
    f.write_text("runtime:\n  providers: " + "[" * 1500 + "]" * 1500 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply") as err:
        load_config(f)
    one_line(str(err.value))


def test_huge_and_endless_files_are_refused_without_reading_them_whole(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("logging:\n  level: " + "x" * (2 * 2**20) + "\n")
    with pytest.raises(ConfigError, match="larger than") as err:
        load_config(f)
    one_line(str(err.value))
    with pytest.raises(ConfigError, match="larger than"):
        load_config("/dev/zero")  # read_text() never returned


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recognition:\n  threshold: .nan\n", "recognition.threshold: must be a finite number"),
        ("decision:\n  cooldown_s: .inf\n", "decision.cooldown_s: must be a finite number"),
        ("quality:\n  min_sharpness: -.inf\n", "quality.min_sharpness: must be a finite number"),
        ("recognition:\n  margin: " + "9" * 400 + "\n", "recognition.margin: must be a finite number"),
        ('data_dir: "/tmp/a\\0b"\n', "data_dir: must be a path string"),
        ('camera:\n  source: "a\\0b"\n', "camera.source: must not contain a NUL"),
        ('"x\\ny": 1\n', "'x\\ny': unknown key"),
        ("a: \x01\n", "not valid YAML"),
        ("detection:\n  input_size: " + "9" * 5000 + "\n", "not valid YAML (a number with too many digits)"),
    ],
)
def test_regressions(tmp_path: Path, cli: Any, text: str, message: str) -> None:
    f = tmp_path / "kiosk.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert message in str(err.value)
    one_line(str(err.value))
    code, _, err_text = cli("-c", str(f), "events")
    assert code == ExitCode.CONFIG and err_text.count("\n") == 1 and message in err_text


@pytest.mark.parametrize("make", ["directory", "missing", "non-utf8", "empty", "list"])
def test_cli_config_file_problems(tmp_path: Path, cli: Any, make: str) -> None:
    f = tmp_path / "kiosk.yaml"
    if make == "directory":
        f.mkdir()
    elif make == "non-utf8":
        f.write_bytes(b"data_dir: /tmp/\xff\xfe\n")
    elif make == "empty":
        f.write_text(f"# only a comment\ndata_dir: {tmp_path / 'data'}\n")
    elif make == "list":
        f.write_text("- a\n- b\n")
    code, out, err = cli("-c", str(f), "events")
    if make == "empty":
        assert code == ExitCode.OK and err == "", err
        return
    assert code == ExitCode.CONFIG and out == "", err
    assert err.startswith("kiosk: error: ") and err.count("\n") == 1, err
