"""What the routes are given: the config and the long-lived services, built once at startup (``kiosk web``) or by
a test with fakes."""

from __future__ import annotations

from dataclasses import dataclass

from kiosk.config import Config


@dataclass
class WebServices:
    cfg: Config
