"""The Jinja2 environment shared by the door screen and the admin pages (``kiosk/web/templates``).

Globals every template gets: ``t(key, **params)`` (the catalogue text in the page's language: ``lang`` in the
template context, else ``screen.language``), ``lang`` and ``static(path)`` (``/static/<path>?v=<content hash>``, so
a browser in kiosk mode never keeps a stale script after an upgrade). Autoescape is on for every template.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import jinja2
from fastapi.templating import Jinja2Templates

from kiosk.config import Config
from kiosk.web.i18n import I18n

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")

# htmx's settings for every page: no inline indicator <style> (the CSP forbids it), no eval (hx-on, js: values).
HTMX_CONFIG = '{"includeIndicatorStyles":false,"allowEval":false}'


class TemplateServices(Protocol):
    """What templating needs of ``WebServices``."""

    @property
    def cfg(self) -> Config: ...

    @property
    def i18n(self) -> I18n: ...


class StaticUrls:
    """``static("door.js")`` → ``/static/door.js?v=<12 hex of its sha256>``, hashed once per file."""

    def __init__(self, root: Path = STATIC, prefix: str = "/static") -> None:
        self.root = root.resolve()
        self.prefix = prefix
        self._versions: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        version = self._versions.get(path)
        if version is None:
            file = (self.root / path).resolve()
            if not file.is_relative_to(self.root) or not file.is_file():
                raise jinja2.TemplateRuntimeError(f"static({path!r}): no such file under {self.root}")
            version = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
            self._versions[path] = version
        return f"{self.prefix}/{path}?v={version}"


def make_environment(services: TemplateServices, *, directory: Path = TEMPLATES) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    i18n = services.i18n
    default_lang = services.cfg.screen.language

    @jinja2.pass_context
    def t(context: jinja2.runtime.Context, key: str, **params: Any) -> str:
        return i18n.t(context.get("lang") or default_lang, key, **params)

    env.globals.update(
        t=t,
        lang=default_lang,
        static=StaticUrls(),
        htmx_config=HTMX_CONFIG,
    )
    return env


def make_templates(services: TemplateServices) -> Jinja2Templates:
    """The templates object the routers render with: ``services.templates.TemplateResponse(request, name, ctx)``."""
    return Jinja2Templates(env=make_environment(services))
