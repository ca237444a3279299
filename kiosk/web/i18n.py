"""Translations for the door screen and the admin app: flat JSON catalogues in ``kiosk/web/locales/<lang>.json``.

Keys are dotted (``door.prompt.blink``, ``admin.people.title``); values may hold ``{name}`` placeholders filled by
``t(lang, key, name=...)``. English is the reference: a key missing in another catalogue falls back to English, and a
key missing in English is a bug that ``tests/test_web_i18n.py`` catches (at run time it shows the key, never a 500).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiosk.errors import ConfigError

log = logging.getLogger(__name__)

LOCALES = Path(__file__).with_name("locales")
REFERENCE = "en"


class _Params(dict[str, Any]):
    """format_map's mapping: a placeholder without a value stays as written instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def load_catalogue(path: Path) -> dict[str, str]:
    """One catalogue: a JSON object of string keys to string values, else a ConfigError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: translation catalogue not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON catalogue ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"{path}: a catalogue is one JSON object of string keys to string values")
    return data


class I18n:
    """The catalogues of ``languages``, loaded once; English always, as the fallback."""

    def __init__(self, languages: tuple[str, ...] = ("en", "zh-Hans"), *, locales: Path = LOCALES) -> None:
        names = (REFERENCE, *(lang for lang in languages if lang != REFERENCE))
        self.languages = tuple(names)
        self.catalogues: dict[str, dict[str, str]] = {lang: load_catalogue(locales / f"{lang}.json") for lang in names}
        self._warned: set[str] = set()

    def raw(self, lang: str, key: str) -> str:
        """The unformatted string (placeholders kept) in ``lang``, else English, else the key itself."""
        catalogue = self.catalogues.get(lang, {})
        if key in catalogue:
            return catalogue[key]
        reference = self.catalogues[REFERENCE]
        if key in reference:
            return reference[key]
        if key not in self._warned:
            self._warned.add(key)
            log.warning("i18n: no English text for key %r", key)
        return key

    def t(self, lang: str, key: str, **params: Any) -> str:
        """``key`` in ``lang`` with ``{placeholders}`` filled from ``params`` (values are not re-interpreted)."""
        text = self.raw(lang, key)
        if not params:
            return text
        return text.format_map(_Params(params))

    def strings(self, lang: str, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` (``door.``) in ``lang``, English fallback, unformatted: for a page's script."""
        keys = [k for k in self.catalogues[REFERENCE] if k.startswith(prefix)]
        return {k: self.raw(lang, k) for k in keys}

    def html_lang(self, lang: str) -> str:
        """The BCP 47 tag for ``<html lang>``: the catalogue name is already one (``en``, ``zh-Hans``)."""
        return lang if lang in self.catalogues else REFERENCE

    def missing(self, lang: str) -> list[str]:
        """English keys that ``lang``'s catalogue lacks (they fall back to English)."""
        catalogue: Mapping[str, str] = self.catalogues.get(lang, {})
        return sorted(k for k in self.catalogues[REFERENCE] if k not in catalogue)
