"""make_templates: the catalogue in the page's language, versioned static URLs, autoescape, the CSP-safe base."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html import unescape as html_unescape
from pathlib import Path

import jinja2
import pytest

from kiosk.config import Config, parse_config
from kiosk.web.i18n import I18n
from kiosk.web.templating import STATIC, StaticUrls, make_environment, make_templates


@dataclass
class Services:
    cfg: Config
    i18n: I18n


def services(language: str = "en") -> Services:
    return Services(parse_config({"screen": {"language": language}}), I18n())


def render(tmp_path: Path, body: str, language: str = "en", **ctx: object) -> str:
    (tmp_path / "base.html").write_text((Path(__file__).parents[1] / "kiosk/web/templates/base.html").read_text())
    (tmp_path / "page.html").write_text(
        '{% extends "base.html" %}{% block body %}<body>' + body + "</body>{% endblock %}"
    )
    return make_environment(services(language), directory=tmp_path).get_template("page.html").render(**ctx)


def test_base_page_language_title_and_htmx_config(tmp_path: Path) -> None:
    html = render(tmp_path, "{{ t('door.prompt.blink') }}", "zh-Hans")
    assert '<html lang="zh-Hans">' in html
    assert "<title>face-kiosk</title>" in html
    assert "请眨眼" in html
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']*)'>", html)
    assert meta and html_unescape(meta.group(1)) == '{"includeIndicatorStyles":false,"allowEval":false}'
    assert "<script>" not in html and "style=" not in html


def test_context_lang_overrides_the_configured_language(tmp_path: Path) -> None:
    html = render(tmp_path, "{{ t('door.result.welcome-name', name=who) }}", "zh-Hans", lang="en", who="Ada")
    assert '<html lang="en">' in html and "Welcome, Ada" in html


def test_autoescape_on_catalogue_parameters_and_context(tmp_path: Path) -> None:
    html = render(tmp_path, "{{ t('door.result.welcome-name', name=who) }}|{{ who }}", who="<script>x</script>")
    assert "<script>x" not in html and html.count("&lt;script&gt;x&lt;/script&gt;") == 2


def test_static_urls_carry_the_content_hash() -> None:
    urls = StaticUrls()
    digest = hashlib.sha256((STATIC / "vendor/htmx-2.0.11.min.js").read_bytes()).hexdigest()[:12]
    assert urls("vendor/htmx-2.0.11.min.js") == f"/static/vendor/htmx-2.0.11.min.js?v={digest}"
    with pytest.raises(jinja2.TemplateRuntimeError, match="no such file"):
        urls("../i18n.py")
    with pytest.raises(jinja2.TemplateRuntimeError, match="no such file"):
        urls("nope.js")


def test_make_templates_renders_through_starlette() -> None:
    templates = make_templates(services())
    assert templates.env.autoescape is True
    assert "url_for" in templates.env.globals and "t" in templates.env.globals
