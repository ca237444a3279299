"""The one startup place: config in, pipeline and gallery out (created lazily, closed in reverse order).

The CLI commands and the door loop get their models and database from here and nowhere else, so tests can inject
a prepared pipeline or an in-memory gallery through the constructor.
"""

from __future__ import annotations

import logging
from functools import cached_property
from types import TracebackType

from kiosk.config import Config
from kiosk.gallery import Gallery, GalleryMatrix
from kiosk.gallery.open import open_gallery
from kiosk.liveness import Liveness
from kiosk.models.manifest import Manifest, load_manifest
from kiosk.recognition.match import Matcher
from kiosk.recognition.pipeline import Pipeline, runtime_options

log = logging.getLogger(__name__)


class Context:
    def __init__(
        self,
        cfg: Config,
        *,
        pipeline: Pipeline | None = None,
        gallery: Gallery | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self.cfg = cfg
        if liveness is not None:
            self.__dict__["liveness"] = liveness
        if pipeline is not None:
            self.__dict__["pipeline"] = pipeline
        if gallery is not None:
            self.__dict__["gallery"] = gallery

    @cached_property
    def manifest(self) -> Manifest:
        return load_manifest(self.cfg.models.manifest)

    @cached_property
    def pipeline(self) -> Pipeline:
        return Pipeline.from_config(self.cfg, self.manifest)

    @cached_property
    def liveness(self) -> Liveness | None:
        """The liveness policy (None when ``liveness.mode`` is off); its models are loaded and hash-checked here."""
        return Liveness.from_config(self.cfg.liveness, self.manifest, runtime_options(self.cfg))

    @cached_property
    def gallery(self) -> Gallery:
        """The gallery through ``storage.open_gallery``: permissions, key and integrity checked before use."""
        return open_gallery(self.cfg)

    def gallery_matrix(self) -> GalleryMatrix:
        spec = self.pipeline.embedder.spec
        return self.gallery.matrix(spec.id, spec.sha256)

    def matcher(self) -> Matcher:
        return self.pipeline.matcher(self.gallery_matrix())

    def stale_warning(self) -> str | None:
        """One line when people have templates from another model (they are never compared)."""
        spec = self.pipeline.embedder.spec
        stale = self.gallery.stale_templates(spec.id, spec.sha256)
        if not stale:
            return None
        names = ", ".join(sorted(stale)[:5]) + (" …" if len(stale) > 5 else "")
        return (
            f"{len(stale)} people have templates from another model ({names}); they are not compared. "
            f"Re-enrol them with `kiosk enroll NAME IMAGE... --append` to use {spec.id}."
        )

    def close(self) -> None:
        gallery = self.__dict__.pop("gallery", None)
        if gallery is not None:
            gallery.close()
        self.__dict__.pop("pipeline", None)
        self.__dict__.pop("liveness", None)

    def __enter__(self) -> Context:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
