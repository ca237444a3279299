"""The layers the folder tree shows hold in the imports: the runtime (everything in ``kiosk/`` but ``lab/`` and
``cli/``) never imports the measuring code in ``kiosk/lab/``, and nothing in ``kiosk/`` imports ``tools``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KIOSK = Path(__file__).resolve().parents[1] / "kiosk"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(KIOSK.parent))


RUNTIME = sorted(p for p in KIOSK.rglob("*.py") if p.relative_to(KIOSK).parts[0] not in ("lab", "cli"))


@pytest.mark.parametrize("path", RUNTIME, ids=_rel)
def test_the_runtime_never_imports_the_lab(path: Path) -> None:
    assert not {m for m in imported_modules(path) if m == "kiosk.lab" or m.startswith("kiosk.lab.")}


@pytest.mark.parametrize("path", sorted(KIOSK.rglob("*.py")), ids=_rel)
def test_the_package_never_imports_the_tools(path: Path) -> None:
    assert not {m for m in imported_modules(path) if m == "tools" or m.startswith("tools.")}


def test_the_scan_sees_imports() -> None:
    """The check above can fail: the lab's own modules do import each other."""
    assert "kiosk.lab.metrics" in imported_modules(KIOSK / "lab" / "evaluate.py")
