"""Placeholder: ``kiosk bench`` is being added (issue #7)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    del sub
