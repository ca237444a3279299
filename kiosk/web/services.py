"""What the routes are given: the config and the long-lived services, built once at startup (``kiosk web``) or by
a test with fakes."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiosk.config import Config
from kiosk.web.accounts import Accounts

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates

    from kiosk.gallery import Gallery
    from kiosk.recognition.pipeline import Pipeline
    from kiosk.screen.client import DoorLink
    from kiosk.web.i18n import I18n


@dataclass
class WebServices:
    """The web process's services. ``templates`` is set after construction: ``make_templates`` needs the services."""

    cfg: Config
    accounts: Accounts
    link: DoorLink
    i18n: I18n
    templates: Jinja2Templates = field(default=None)  # type: ignore[assignment]
    _pipeline: Any = field(default=None, init=False, repr=False)
    _pipeline_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def gallery(self, *, need_key: bool = True) -> contextlib.AbstractContextManager[Gallery]:
        """The gallery, opened for one use (each request its own connection; close it with ``with``). The
        integrity check ran once at startup (``build_services``), not on every request."""
        from kiosk.gallery.open import open_gallery

        return open_gallery(self.cfg, check=False, need_key=need_key)

    def pipeline(self) -> Pipeline:
        """The recognition pipeline, loaded on first use (the first enrolment), once, under a lock."""
        with self._pipeline_lock:
            if self._pipeline is None:
                from kiosk.models.manifest import load_manifest
                from kiosk.recognition.pipeline import Pipeline

                self._pipeline = Pipeline.from_config(self.cfg, load_manifest(self.cfg.models.manifest))
            pipeline: Pipeline = self._pipeline
            return pipeline

    def close(self) -> None:
        """Close what the services hold open; safe to call twice."""
        self.accounts.close()


def build_services(cfg: Config) -> WebServices:
    """The services of ``kiosk web``: accounts, the door link (not started: the app's lifespan starts it), the
    translations and the templates. The gallery is opened and checked once here, so a broken one stops the start."""
    from kiosk.gallery.open import open_gallery
    from kiosk.screen.client import DoorLink
    from kiosk.web.i18n import I18n
    from kiosk.web.templating import make_templates

    with open_gallery(cfg, need_key=False):
        pass
    accounts = Accounts(cfg.web_db_path, cfg.web)
    try:
        services = WebServices(cfg=cfg, accounts=accounts, link=DoorLink(cfg.runtime_dir), i18n=I18n())
        services.templates = make_templates(services)
    except BaseException:
        accounts.close()
        raise
    return services
