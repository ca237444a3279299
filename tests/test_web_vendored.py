"""Vendored front-end files are exactly the pinned ones listed in kiosk/web/static/vendor/VENDORED.md."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "kiosk" / "web" / "static" / "vendor"


def _table() -> dict[str, str]:
    rows = re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", (VENDOR / "VENDORED.md").read_text(), re.M)
    return dict(rows)


def test_every_vendored_file_is_listed_with_its_hash() -> None:
    table = _table()
    files = {p.name for p in VENDOR.iterdir() if p.suffix in (".js", ".css")}
    assert files, "no vendored files found"
    assert files == set(table), f"listed {sorted(table)}, present {sorted(files)}"
    for name, digest in table.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} differs from its pin"


def test_no_page_or_script_loads_from_another_origin() -> None:
    web = VENDOR.parents[1]
    for path in [*web.rglob("*.html"), *(p for p in web.rglob("*.js") if "vendor" not in p.parts), *web.rglob("*.css")]:
        text = path.read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), f"{path} loads from another origin"
        assert "@import url(http" not in text, path
