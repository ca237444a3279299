"""Placeholder: ``kiosk backup``, ``restore``, ``keys`` and the data commands are being added (issue #6)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    del sub
