"""Deploying an exported recogniser: the accuracy gate against a named baseline and thresholds measured on labels.

``tools export`` stages the new ONNX in a temporary folder and hands it here before anything is written to
``models/``. Both steps run through the kiosk's own evaluation (``kiosk.lab.evaluate``: same detector, alignment,
preprocessing and embedding cache as ``kiosk eval``), with the helpers ``tools quantize`` uses:

- **gate** (:func:`run_gate`): the candidate and a recogniser already in the manifest (the baseline) on the same
  pairs CSV with the same detector; TAR at FAR 1e-3 (the quantiser's gate metric) may not fall below the
  baseline's by more than ``max_drop`` points. Accuracy and ROC AUC are reported next to it.
- **thresholds** (:func:`measure_thresholds`): all pairs of a labels CSV; accept at FMR 1e-5, likely at FMR 1e-3,
  and the impostor tail (``fmr_1e-3`` … ``fmr_1e-5``) the door scales its threshold along — the rule of
  ``tools.models.quantize.measured_thresholds``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiosk.config import Config, parse_config
from kiosk.lab import metrics
from kiosk.lab.cache import EmbeddingCache
from kiosk.lab.evaluate import SPECIAL_IDENTITIES, evaluate_labels, read_labels, read_pairs
from kiosk.models.backends import load_runner
from kiosk.models.manifest import ModelSpec, load_manifest, sha256_file
from kiosk.recognition.align import get_template
from kiosk.recognition.embed import Embedder
from kiosk.recognition.pipeline import Pipeline, runtime_options
from tools.errors import ToolError
from tools.models.quantize import (
    ACCEPT_FMR,
    GATE_FAR,
    LIKELY_FMR,
    _embed_fn,
    _fingerprint,
    _pct,
    _tar,
    evaluate,
    measured_thresholds,
)
from tools.models.registry import write_manifest

__all__ = [
    "ACCEPT_FMR",
    "GATE_FAR",
    "LIKELY_FMR",
    "DeployError",
    "GateSetup",
    "candidate_pipeline",
    "check_labels",
    "measure_thresholds",
    "open_gate",
    "passed",
    "refusal",
    "run_gate",
    "stage_spec",
]


class DeployError(ToolError):
    """A one-line reason the model cannot be gated or given measured thresholds (exit 2: fix the arguments)."""

    code = 2


def stage_spec(folder: Path, model_id: str, entry: dict[str, Any]) -> ModelSpec:
    """The staged model as the kiosk will read it: ``entry`` (its ``file`` inside ``folder``) written to a manifest
    of its own in ``folder`` and parsed by the kiosk's loader, so a bad entry fails here, not after registration."""
    staged = {**entry, "sha256": sha256_file(folder / entry["file"])}
    path = write_manifest(folder, {"version": 1, "models": {model_id: staged}})
    spec = load_manifest(path).get(model_id, task="embed")
    spec.verify()
    return spec


# ------------------------------------------------------------------------------------------------- before the export


def check_labels(labels: Path) -> dict[str, int]:
    """Refuse a labels CSV that cannot give a threshold at FMR 1e-5 (too few impostor pairs, no genuine pair) before
    the slow part; images that fail to embed are checked again after it. Returns the counts it found."""
    if not labels.is_file():
        raise DeployError(f"--thresholds-from {labels}: file not found")
    rows = [r for r in read_labels(labels) if r.identity not in SPECIAL_IDENTITIES]
    per_identity = Counter(r.identity for r in rows)
    n = len(rows)
    genuine = sum(c * (c - 1) // 2 for c in per_identity.values())
    impostor = n * (n - 1) // 2 - genuine
    need = metrics.min_negatives(float(ACCEPT_FMR))
    where = f"--thresholds-from {labels.name}: {n} images of {len(per_identity)} identities"
    if impostor < need:
        raise DeployError(
            f"{where} give {impostor:,} impostor pairs; a threshold at FMR {ACCEPT_FMR} needs {need:,} "
            "(about 450 images of several people)"
        )
    if genuine == 0:
        raise DeployError(f"{where} and no identity with two images: no genuine pair to measure thresholds on")
    return {"n_images": n, "n_identities": len(per_identity), "n_genuine": genuine, "n_impostor": impostor}


@dataclass
class GateSetup:
    """The baseline's pipeline (its detector is the candidate's too) and the pairs file the gate runs on."""

    cfg: Config
    baseline: Pipeline
    pairs: Path
    root: Path | None
    max_drop: float


def open_gate(
    models_dir: Path, baseline_id: str, pairs: Path, root: Path | None, detector: str | None, max_drop: float
) -> GateSetup:
    """Load the baseline from ``models_dir``'s manifest and check the pairs file, before anything slow runs."""
    if not pairs.is_file():
        raise DeployError(f"--gate-pairs {pairs}: file not found")
    n_impostor = sum(not p.same for p in read_pairs(pairs))
    need = metrics.min_negatives(float(GATE_FAR))
    if n_impostor < need:
        raise DeployError(
            f"--gate-pairs {pairs.name} has {n_impostor} impostor pairs: TAR at FAR {GATE_FAR} needs {need}"
        )
    manifest_path = models_dir / "manifest.yaml"
    manifest = load_manifest(manifest_path)
    spec = manifest.models.get(baseline_id)
    if spec is None or spec.task != "embed":
        known = ", ".join(sorted(k for k, s in manifest.models.items() if s.task == "embed")) or "none"
        raise DeployError(f"--baseline {baseline_id!r} is not a recogniser in {manifest_path} (recognisers: {known})")
    models: dict[str, Any] = {"manifest": str(manifest_path), "recognizer": baseline_id}
    if detector:
        models["detector"] = detector
    cfg = parse_config({"models": models})
    return GateSetup(cfg, Pipeline.from_config(cfg, manifest), pairs, root, max_drop)


# ------------------------------------------------------------------------------------------------- after the export


def candidate_pipeline(setup: GateSetup, spec: ModelSpec) -> tuple[Config, Pipeline]:
    """The staged recogniser behind the baseline's detector: the door's pipeline with only the recogniser changed."""
    cfg = dataclasses.replace(setup.cfg, models=dataclasses.replace(setup.cfg.models, recognizer=spec.id))
    embedder = Embedder(spec, load_runner(spec, runtime_options(cfg)))
    return cfg, Pipeline(cfg, setup.baseline.detector, embedder, get_template(spec.align_template))


def _row(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": report["accuracy_mean"],
        "roc_auc": report["roc_auc"],
        "tar_at_far": report["tar_at_far"],
        "n_pairs": report["n_pairs"],
        "n_failed": report["n_failed"],
    }


def run_gate(setup: GateSetup, cfg: Config, candidate: Pipeline, cache: EmbeddingCache) -> dict[str, Any]:
    """Evaluate the baseline and the candidate on the gate's pairs; the gate's record (``passed`` says the verdict)."""
    base_spec, cand_spec = setup.baseline.embedder.spec, candidate.embedder.spec
    print(f"export: gate: evaluating {base_spec.id} (baseline) on {setup.pairs.name}")
    ev_base = evaluate(setup.baseline, setup.cfg, setup.pairs, setup.root, cache, None)
    print(f"export: gate: evaluating {cand_spec.id} (candidate) on {setup.pairs.name}")
    ev_cand = evaluate(candidate, cfg, setup.pairs, setup.root, cache, None)
    t_base, t_cand = _tar(ev_base.pairs, GATE_FAR), _tar(ev_cand.pairs, GATE_FAR)
    assert t_base is not None and t_cand is not None  # open_gate checked the impostor count
    drop = 100.0 * (t_base - t_cand)
    for name, ev in ((base_spec.id, ev_base), (cand_spec.id, ev_cand)):
        r = ev.pairs
        print(
            f"export: gate: {name:<16} accuracy {_pct(r['accuracy_mean'])}, ROC AUC {r['roc_auc']:.4f}, "
            f"TAR@FAR {GATE_FAR} {_pct(_tar(r, GATE_FAR))} ({r['n_pairs']} pairs, {r['n_failed']} images failed)"
        )
    return {
        "metric": f"TAR@FAR {GATE_FAR}",
        "pairs_file": setup.pairs.name,
        "pairs_sha256": sha256_file(setup.pairs),
        "detector": {"id": setup.baseline.detector.spec.id, "sha256": setup.baseline.detector.spec.sha256},
        "baseline_id": base_spec.id,
        "baseline_sha256": base_spec.sha256,
        "baseline_value": t_base,
        "candidate_value": t_cand,
        "drop_points": round(drop, 4),
        "max_drop_points": setup.max_drop,
        "passed": drop <= setup.max_drop,
        "baseline": _row(ev_base.pairs),
        "candidate": _row(ev_cand.pairs),
    }


def refusal(gate: dict[str, Any]) -> str:
    """The one line that says why the gate refused the candidate."""
    return (
        f"refused: TAR@FAR {GATE_FAR} on {gate['pairs_file']} is {_pct(gate['candidate_value'])} against "
        f"{_pct(gate['baseline_value'])} for the baseline {gate['baseline_id']}, {gate['drop_points']:.2f} points "
        f"worse > --max-drop {gate['max_drop_points']:g}; nothing registered"
    )


def passed(gate: dict[str, Any]) -> str:
    """The line that says the candidate passed the gate, with both values."""
    return (
        f"gate passed: TAR@FAR {GATE_FAR} {_pct(gate['candidate_value'])} against {_pct(gate['baseline_value'])} "
        f"({gate['baseline_id']}), drop {gate['drop_points']:+.2f} points <= {gate['max_drop_points']:g}"
    )


def measure_thresholds(
    labels: Path, root: Path | None, cfg: Config, candidate: Pipeline, cache: EmbeddingCache
) -> tuple[dict[str, float], dict[str, Any]]:
    """All-pairs thresholds of the candidate on ``labels`` (accept at FMR 1e-5, likely at 1e-3, the 1e-3 … 1e-5 tail)
    and the evaluation's summary for the report and provenance."""
    print(f"export: measuring thresholds on {labels.name} (all pairs)")
    report = evaluate_labels(
        labels,
        root=root,
        embed=_embed_fn(candidate, cfg),
        fingerprint=_fingerprint(candidate, cfg),
        cache=cache,
        models=candidate.models,
    )
    summary = {
        "labels_file": labels.name,
        "labels_sha256": sha256_file(labels),
        **{k: report[k] for k in ("n_images", "n_identities", "n_failed", "n_genuine", "n_impostor")},
        "fnmr_at_fmr": report["fnmr_at_fmr"],
        "rank1": report["rank1"],
    }
    fnmr = report["fnmr_at_fmr"]
    if fnmr.get(ACCEPT_FMR) is None or fnmr.get(LIKELY_FMR) is None:
        raise DeployError(
            f"--thresholds-from {labels.name}: {report['n_images'] - report['n_failed']} usable images "
            f"({report['n_failed']} failed) give {report['n_impostor']:,} impostor and {report['n_genuine']:,} "
            f"genuine pairs: too few for a threshold at FMR {ACCEPT_FMR}; nothing registered"
        )
    return measured_thresholds(report), summary
