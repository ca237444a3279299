"""The catalogues: every key the templates and scripts use exists in English; zh-Hans covers the door screen."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kiosk.errors import ConfigError
from kiosk.web.i18n import LOCALES, I18n

WEB = Path(__file__).resolve().parents[1] / "kiosk" / "web"
# t("key") / t('key') in templates; "door.x.y" string literals in the page scripts (door.js names its keys in full).
TEMPLATE_KEY = re.compile(r"""\bt\(\s*["']([a-z0-9][\w.-]*)["']""")
SCRIPT_KEY = re.compile(r"""["']((?:door|admin|app)\.[a-z0-9][\w.-]*)["']""")


def used_keys() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for path in sorted((WEB / "templates").rglob("*.html")):
        for key in TEMPLATE_KEY.findall(path.read_text(encoding="utf-8")):
            used.setdefault(key, set()).add(str(path.relative_to(WEB)))
    for path in sorted((WEB / "static").glob("*.js")):
        for key in SCRIPT_KEY.findall(path.read_text(encoding="utf-8")):
            used.setdefault(key, set()).add(str(path.relative_to(WEB)))
    return used


def test_every_used_key_is_in_english() -> None:
    english = I18n().catalogues["en"]
    used = used_keys()
    assert {"app.name", "door.prompt.blink", "door.result.welcome-name"} <= set(used), "the key patterns match nothing"
    missing = {key: sorted(where) for key, where in used.items() if key not in english}
    assert not missing, f"keys used but missing in en.json: {missing}"


def test_zh_hans_covers_every_door_key_and_only_known_keys() -> None:
    i18n = I18n()
    english, chinese = i18n.catalogues["en"], i18n.catalogues["zh-Hans"]
    door = [k for k in english if k.startswith("door.")]
    assert door and not [k for k in door if k not in chinese]
    assert not [k for k in chinese if k not in english], "zh-Hans has keys English lacks"
    # placeholders match, so a translation never drops the name or the countdown
    for key in chinese:
        assert set(re.findall(r"{(\w+)}", chinese[key])) == set(re.findall(r"{(\w+)}", english[key])), key
    # really translated: the door prompts are Chinese text, not English copies
    assert i18n.t("zh-Hans", "door.prompt.blink") == "请眨眼"
    assert re.search(r"[\u4e00-\u9fff]", i18n.t("zh-Hans", "door.result.denied"))


def test_t_formats_falls_back_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "en.json").write_text(json.dumps({"a.hi": "Hello, {name}", "a.only_en": "only English"}))
    (tmp_path / "zh-Hans.json").write_text(json.dumps({"a.hi": "你好，{name}"}))
    i18n = I18n(locales=tmp_path)
    assert i18n.t("zh-Hans", "a.hi", name="Ada") == "你好，Ada"
    assert i18n.t("zh-Hans", "a.only_en") == "only English"  # falls back to English
    assert i18n.t("fr", "a.hi", name="Ada") == "Hello, Ada"  # unknown language: English
    assert i18n.t("en", "a.hi", name="{x} <b>") == "Hello, {x} <b>"  # values are not re-formatted
    assert i18n.t("en", "a.hi") == "Hello, {name}"  # a missing parameter stays visible, no KeyError
    assert i18n.t("en", "a.nope") == "a.nope"
    assert "a.nope" in caplog.text
    assert i18n.missing("zh-Hans") == ["a.only_en"]
    assert i18n.strings("zh-Hans", "a.") == {"a.hi": "你好，{name}", "a.only_en": "only English"}


@pytest.mark.parametrize(
    ("text", "why"),
    [("{not json", "not a readable JSON"), ('["a"]', "string keys to string values"), ('{"a": 1}', "string values")],
)
def test_a_bad_catalogue_is_a_config_error(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "en.json").write_text(text)
    with pytest.raises(ConfigError, match=why):
        I18n(("en",), locales=tmp_path)


def test_a_missing_catalogue_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "en.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"zh-Hans\.json: translation catalogue not found"):
        I18n(locales=tmp_path)


def test_shipped_catalogues_are_valid_json_objects() -> None:
    for path in LOCALES.glob("*.json"):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path
