"""What ``kiosk check`` checks and ``kiosk models`` lists, as data: the CLI prints it, the web app's system page
(``GET /api/system``) shows it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from kiosk.authz import current_caller
from kiosk.config import Config
from kiosk.context import Context
from kiosk.errors import KioskError
from kiosk.gallery import Gallery
from kiosk.gallery.keys import load_cipher
from kiosk.gallery.open import encryption_problem, open_gallery
from kiosk.gallery.permissions import permission_problems
from kiosk.models.manifest import load_manifest

if TYPE_CHECKING:
    from kiosk.recognition.pipeline import Pipeline


def model_list(cfg: Config) -> list[dict[str, Any]]:
    """Every model of the manifest: id, task, format, licence, sha256, file, whether configured, hash status."""
    manifest = load_manifest(cfg.models.manifest)
    out = []
    for spec in manifest.models.values():
        try:
            spec.verify()
            status = "ok"
        except KioskError as exc:
            status = str(exc)
        active = spec.id in (cfg.models.detector, cfg.models.recognizer)
        out.append(
            {
                "id": spec.id,
                "task": spec.task,
                "format": spec.format,
                "licence": spec.licence,
                "sha256": spec.sha256,
                "file": str(spec.path),
                "active": active,
                "status": status,
            }
        )
    return out


def check_results(cfg: Config, *, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    """What ``kiosk check`` checks, as a list of {"check", "ok", "detail", ...}; ``pipeline``: one already loaded
    (the web app's), else the configured models are loaded and hash-checked here."""
    checks: list[dict[str, Any]] = [{"check": "config", "ok": True, "detail": str(cfg.origin or "built-in defaults")}]
    gallery, gallery_error = _open_for_check(cfg)
    with Context(cfg, gallery=gallery, pipeline=pipeline) as ctx:
        try:
            pipeline = ctx.pipeline
            for role, info in pipeline.models.items():
                checks.append(
                    {
                        "check": f"model {role}",
                        "ok": True,
                        "detail": f"{info['id']} sha256 {info['sha256'][:12]}",
                    }
                )
        except KioskError as exc:
            checks.append({"check": "models", "ok": False, "detail": str(exc)})
            pipeline = None
        try:
            live = ctx.liveness
            mode = cfg.liveness.mode
            ok = live is None or not cfg.liveness.passive_required or live.passive is not None
            detail = f"mode {mode}" + ("" if ok else ": no passive model configured, every grant will be refused")
            checks.append({"check": "liveness", "ok": ok, "detail": detail})
        except KioskError as exc:
            checks.append({"check": "liveness", "ok": False, "detail": str(exc)})
        checks.append(_check_permissions(cfg))
        if gallery is None:
            checks.append({"check": "gallery", "ok": False, "detail": gallery_error})
        else:
            try:
                problems = gallery.integrity_check()
                counts = gallery.template_counts()
                n_people = len(gallery.list_people())
                detail = f"{cfg.gallery_path}: {n_people} people, " + (
                    ", ".join(f"{n} templates from {m}" for (m, _), n in counts.items()) or "no templates"
                )
                checks.append({"check": "gallery", "ok": not problems, "detail": "; ".join(problems) or detail})
                checks.append(_check_encryption(cfg, gallery))
                checks.append(_check_event_chain(gallery))
                if pipeline is not None:
                    stale = ctx.stale_warning()
                    checks.append({"check": "stale templates", "ok": stale is None, "detail": stale or "none"})
                    spec = pipeline.embedder.spec
                    checks.append(_check_open_set(cfg, pipeline, n_people, counts.get((spec.id, spec.sha256), 0)))
            except KioskError as exc:
                checks.append({"check": "gallery", "ok": False, "detail": str(exc)})
    checks += [_check_camera(cfg), _check_door(cfg)]
    return checks


def _check_open_set(cfg: Config, pipeline: Pipeline, people: int, templates: int) -> dict[str, Any]:
    """The threshold in force for this gallery's size and the expected false grants per stranger it gives.

    Fails when a fixed ``recognition.threshold`` lets strangers in at more than ten times ``recognition.fpir``."""
    threshold = pipeline.accept_threshold(templates)
    expected = pipeline.expected_fpir(templates)
    target = cfg.recognition.fpir
    if cfg.recognition.threshold is not None:
        how = "fixed by recognition.threshold"
    elif pipeline.tail is None:
        how = f"fixed: model {pipeline.embedder.spec.id} has no measured impostor tail"
    elif threshold > pipeline.thresholds.accept:
        how = f"raised from {pipeline.thresholds.accept:.3f} for the gallery's size to keep recognition.fpir {target:g}"
    else:
        how = f"the model's accept threshold (recognition.fpir {target:g} needs no more at this size)"
    rate = "unknown" if expected is None else f"{expected:.1e} (about 1 in {max(1, round(1 / expected)):,})"
    detail = f"{people} people, {templates} templates: threshold {threshold:.3f}, {how}; expected false grants per "
    detail += f"stranger {rate}"
    ok = expected is None or cfg.recognition.threshold is None or expected <= 10 * target
    return {
        "check": "false grants",
        "ok": ok,
        "detail": detail,
        "people": people,
        "templates": templates,
        "threshold": round(threshold, 4),
        "expected_fpir": expected,
        "target_fpir": target,
    }


def _open_for_check(cfg: Config) -> tuple[Gallery | None, str]:
    """The gallery without the start-up refusals (permissions, key, integrity): `check` reports each on its own."""
    relaxed = dataclasses.replace(cfg, gallery=dataclasses.replace(cfg.gallery, check_permissions=False))
    try:
        return open_gallery(relaxed, check=False, need_key=False), ""
    except KioskError as exc:
        return None, str(exc)


def _check_permissions(cfg: Config) -> dict[str, Any]:
    """The data folder 0700 and the gallery files without group/other bits, owned by this user."""
    problems = permission_problems(cfg)
    where = f"{cfg.gallery_path.parent} and the gallery private to {current_caller().user}"
    if not cfg.gallery.check_permissions:
        detail = "not checked at start (gallery.check_permissions: false)" + (": " if problems else "")
        return {"check": "permissions", "ok": True, "detail": detail + "; ".join(problems)}
    return {"check": "permissions", "ok": not problems, "detail": "; ".join(problems) or where}


def _check_encryption(cfg: Config, gallery: Gallery) -> dict[str, Any]:
    """Templates per key against the configured key (loaded and checked here, never printed)."""
    status = gallery.encryption_status()
    counts = ", ".join(
        f"{n} {'unencrypted' if k is None else 'with key ' + k}" for k, n in sorted(status.items(), key=str) if n
    )
    key: str | None = None
    if cfg.gallery.encrypt:
        try:
            key = load_cipher(cfg).key_id
        except KioskError as exc:
            return {"check": "encryption", "ok": False, "detail": str(exc)}
    problem = encryption_problem(status, key)
    state = f"on, key {key}" if key else "off"
    return {"check": "encryption", "ok": problem is None, "detail": problem or f"{state} ({counts or 'no templates'})"}


def _check_event_chain(gallery: Gallery) -> dict[str, Any]:
    report = gallery.verify_events()
    if report.ok:
        head = f", head {report.head_id}" if report.head_id is not None else ""
        return {"check": "event chain", "ok": True, "detail": f"{report.checked} events, chain intact{head}"}
    return {"check": "event chain", "ok": False, "detail": report.reason or f"broken at {report.first_broken_id}"}


def _check_camera(cfg: Config) -> dict[str, Any]:
    """The camera source spec parses (it is not opened: the running kiosk may hold the device)."""
    from kiosk.door.camera import open_source

    try:
        src = open_source(cfg.camera.source, cfg.camera)
    except KioskError as exc:
        return {"check": "camera", "ok": False, "detail": str(exc)}
    kind = "live" if src.live else "replay"
    return {"check": "camera", "ok": True, "detail": f"{src.name} ({kind}; not opened, the kiosk may be using it)"}


def _check_osdp(cfg: Config) -> dict[str, Any]:
    """An OSDP reader: libosdp and pyserial importable, the key file readable (the port is not opened: the running
    kiosk holds it)."""
    import importlib.util

    from kiosk.door.osdp import OSDP_EXTRA, load_scbk

    o = cfg.door.osdp
    where = f"osdp reader address {o.address} on {o.port} at {o.baud} baud, {o.format}"
    missing = [m for m in ("osdp_sys", "serial") if importlib.util.find_spec(m) is None]
    if missing:
        return {"check": "door", "ok": False, "detail": f"{where}: {', '.join(missing)} not installed ({OSDP_EXTRA})"}
    if o.scbk_file is None:
        return {"check": "door", "ok": True, "detail": f"{where}; NO Secure Channel key (insecure_install_mode)"}
    try:
        load_scbk(o.scbk_file)
    except KioskError as exc:
        return {"check": "door", "ok": False, "detail": f"{where}: {exc}"}
    return {"check": "door", "ok": True, "detail": f"{where}, Secure Channel key readable"}


def _check_door(cfg: Config) -> dict[str, Any]:
    """The relay driver's library is importable (the pin is not touched: the running kiosk may hold it)."""
    import importlib.util

    needs = {
        "gpiozero": ("gpiozero", "pip install 'face-kiosk[pi]'"),
        "jetson": ("Jetson", "pip install 'face-kiosk[jetson]'"),
    }
    d = cfg.door
    if d.driver == "osdp":
        return _check_osdp(cfg)
    where = f"{d.driver}, relay pin {d.relay_pin} active-{'high' if d.active_high else 'low'}, pulse {d.pulse_s:g} s"
    if d.driver in needs:
        module, hint = needs[d.driver]
        if importlib.util.find_spec(module) is None:
            return {"check": "door", "ok": False, "detail": f"{where}: {module} is not installed ({hint})"}
    return {
        "check": "door",
        "ok": True,
        "detail": where + ("; use `kiosk door test` to click it" if d.driver != "simulated" else ""),
    }
