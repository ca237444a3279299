"""What the routes are given: the config and the long-lived services, built once at startup (``kiosk web``) or by
a test with fakes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiosk.config import Config
from kiosk.web.accounts import Accounts

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates

    from kiosk.enroll import EnrolmentModel
    from kiosk.gallery import Gallery
    from kiosk.screen.client import DoorLink
    from kiosk.web.i18n import I18n
    from kiosk.web.worker import InlineWorker, ModelWorker


@dataclass
class WebServices:
    """The web process's services. ``templates`` is set after construction: ``make_templates`` needs the services."""

    cfg: Config
    accounts: Accounts
    link: DoorLink
    i18n: I18n
    templates: Jinja2Templates = field(default=None)  # type: ignore[assignment]
    # ``kiosk.fleet.service.send_command``'s signature; None: the real one (tests pass a fake, ``kiosk.web.doors``).
    fleet_command: Callable[..., dict[str, Any]] | None = field(default=None, repr=False)
    _worker: ModelWorker | InlineWorker | None = field(default=None, init=False, repr=False)
    _model: EnrolmentModel | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def gallery(self, *, need_key: bool = True) -> contextlib.AbstractContextManager[Gallery]:
        """The gallery, opened for one use (each request its own connection; close it with ``with``). The
        integrity check ran once at startup (``build_services``), not on every request."""
        from kiosk.gallery.open import open_gallery

        return open_gallery(self.cfg, check=False, need_key=need_key)

    def is_hub(self) -> bool:
        """Fleet mode: this config is a site hub's, so the app shows the site's doors. A hub is known by its broker
        password, ``<data_dir>/fleet/hub.secret``, which ``kiosk hub serve`` and ``kiosk hub add-door`` write and a
        door never has (``kiosk.fleet.secrets``). Checked on each use: a hub set up while the app runs shows up."""
        return (self.cfg.fleet_dir / "hub.secret").is_file()

    def send_command(self, door: str, name: str, **kw: Any) -> dict[str, Any]:
        """A live command to a door of the site, as the hub (blocking: call it in a thread)."""
        if self.fleet_command is not None:
            return self.fleet_command(self.cfg, door, name, **kw)
        from kiosk.fleet.service import send_command

        return send_command(self.cfg, door, name, **kw)

    def worker(self) -> ModelWorker | InlineWorker:
        """The model worker (``kiosk.web.worker``): photos are decoded and judged, and the System page's checks run,
        in a child process, so this process never loads the models. Made on first use; the process starts on its
        first request."""
        with self._lock:
            if self._worker is None:
                from kiosk.web.worker import ModelWorker

                self._worker = ModelWorker(self.cfg)
            return self._worker

    def use_pipeline(self, pipeline: Any) -> None:
        """Judge photos with ``pipeline`` in this process instead of a worker (tests that share one loaded pipeline)."""
        from kiosk.web.worker import InlineWorker

        with self._lock:
            self._worker = InlineWorker(self.cfg, pipeline)

    def enrolment_model(self) -> EnrolmentModel:
        """What storing an enrolment needs (config, thresholds, the recogniser's id and sha256), read from the
        manifest once, with the file's hash checked, without loading any model."""
        with self._lock:
            if self._model is None:
                from kiosk.enroll import enrolment_model

                self._model = enrolment_model(self.cfg)
            return self._model

    def close(self) -> None:
        """Close what the services hold open (the model worker included); safe to call twice."""
        if self._worker is not None:
            self._worker.close()
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
