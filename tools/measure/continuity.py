"""Measure how far a person's similarity drops on closed-eye frames, to choose the identity-continuity threshold.

During a liveness challenge every frame of the track must still match the person whose votes started it
(``kiosk.door.decide``); a blink closes the eyes, and the recogniser's score drops on those frames. This tool runs the
real blink recordings (``$KIOSK_TEST_DATA/liveness/blinks``, per-frame eyes-closed labels) through the kiosk's own
pipeline (detect, align, quality, embed) and scores every frame against templates of the same person taken from
open-eye frames of *another* recording (leave one recording out: another session, as at the door), in a gallery that
also holds ``--distractors`` LFW people. Frames are grouped as closed (labelled 1), near (open, within 3 frames of a
closed one: lids moving) and open. For each group: score percentiles, the fraction below the candidate thresholds and
the fraction whose best candidate is someone else. The other side: the best score of the person against LFW faces
(an impostor B answering A's challenge) and of LFW people against the recording's frames.

With ``--cost`` it measures instead what the rule costs: a running challenge embeds every frame (it used to embed
one every ``decision.embed_interval_s``, 0.5 s), so each challenge frame pays one more recogniser run; the stages of
a challenge frame (detect, align + quality, embed, face mesh + iris) are timed interleaved on frames of a recording.

Usage: ``python -m tools continuity [--data DIR] [--distractors 200] [--json OUT]``, or ``... --cost [--json OUT]``.
Prints figures; no images are written anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kiosk.config import parse_config
from kiosk.context import Context
from kiosk.lab.blinks import VIDEOS, iter_blink_video
from kiosk.lab.machine import describe, loadavg
from kiosk.liveness.mesh import load_face_mesh
from kiosk.recognition.detect import select_faces
from kiosk.recognition.match import Matcher
from kiosk.recognition.pipeline import Pipeline, runtime_options
from kiosk.stats import dist, interleaved_ms
from kiosk.types import FloatArray
from tools import ROOT

NEAR = 3  # open frames this close to a closed one are "near": the lids are still moving
TEMPLATES = 3  # open-eye frames per recording used as the person's templates
MAHIE = 1  # the recorded person's id in the measuring gallery; LFW people get 2, 3, ...


def _embed_video(pipeline: Pipeline, data: Path, name: str) -> tuple[list[bool], list[int], FloatArray, list[bool]]:
    """(eyes-closed label of every frame, index of every frame with a face, their embeddings, quality passed)."""
    closed, idx, vecs, ok = [], [], [], []
    for f in iter_blink_video(data, name):
        closed.append(f.closed)
        faces = select_faces(pipeline.detect(f.image), "largest", f.image.shape)
        if not faces:
            continue
        ((crop, quality),) = pipeline.prepare(f.image, faces)
        idx.append(f.index)
        vecs.append(pipeline.embedder.embed([crop])[0])
        ok.append(quality.ok)
    return closed, idx, np.asarray(vecs, dtype=np.float32), ok


def _template_rows(closed: list[bool], idx: list[int]) -> list[int]:
    """Rows (into ``idx``) of ``TEMPLATES`` open-eye frames spread over the recording, far from any blink."""
    far = [r for r, i in enumerate(idx) if not any(closed[max(0, i - 10) : i + 11])]
    return [far[int(k * (len(far) - 1) / (TEMPLATES - 1))] for k in range(TEMPLATES)]


def _stats(values: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any]:
    if not values.size:
        return {"n": 0}
    out: dict[str, Any] = {
        "n": int(values.size),
        "min": round(float(values.min()), 4),
        "p1": round(float(np.percentile(values, 1)), 4),
        "p5": round(float(np.percentile(values, 5)), 4),
        "median": round(float(np.median(values)), 4),
    }
    for name, thr in thresholds.items():
        out[f"below_{name}_{thr:.2f}"] = round(float(np.mean(values < thr)), 4)
    return out


def _cost(args: argparse.Namespace) -> int:
    """Median ms of each stage of a challenge frame, interleaved so they share the machine's load."""
    cfg = parse_config({})
    with Context(cfg) as ctx:
        pipeline = ctx.pipeline
        mesh = load_face_mesh(ctx.manifest, cfg.liveness.active.model, runtime_options(cfg))
        frames = [f.image for f in iter_blink_video(args.data, VIDEOS[0], stop=60)]
        faces = [select_faces(pipeline.detect(f), "largest", f.shape)[0] for f in frames]
        crops = [pipeline.prepare(f, [face])[0][0] for f, face in zip(frames, faces, strict=True)]
        n = len(frames)
        started = describe()
        samples = interleaved_ms(
            {
                "detect": lambda r: pipeline.detect(frames[r % n]),
                "align_quality": lambda r: pipeline.prepare(frames[r % n], [faces[r % n]]),
                "embed": lambda r: pipeline.embedder.embed([crops[r % n]]),
                "face_mesh_iris": lambda r: mesh.landmarks(frames[r % n], faces[r % n]),
            },
            args.rounds,
        )
    ms = {k: dist(v, 3) for k, v in samples.items()}
    med = {k: float(d["median"] or 0.0) for k, d in ms.items()}
    frame = sum(med.values())
    interval = cfg.decision.embed_interval_s
    report: dict[str, Any] = {
        "machine": started | {"loadavg_end": loadavg()},
        "stage_ms": ms,
        # Before: a challenge frame was embedded once per embed_interval_s; now every one is.
        "challenge_frame_ms": {
            "without_embedding": round(frame - med["embed"], 2),
            "with_embedding": round(frame, 2),
            **{
                f"before_mean_at_{fps:g}_fps": round(frame - med["embed"] * (1.0 - 1.0 / (fps * interval)), 2)
                for fps in (10.0, 30.0)
            },
        },
        "embed_interval_s": interval,
        "extra_embeddings_per_challenge_second": {f"{fps:g} fps": fps - 1.0 / interval for fps in (10.0, 15.0, 30.0)},
    }
    print(", ".join(f"{k} {v['median']:.2f} ms" for k, v in ms.items()))
    print(f"a challenge frame: {frame - med['embed']:.2f} ms without its embedding, {frame:.2f} ms with it")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools continuity", description=__doc__.splitlines()[0])
    default_data = os.environ.get("KIOSK_TEST_DATA", str(ROOT / ".." / "shared" / "data" / "faces"))
    parser.add_argument("--data", type=Path, default=Path(default_data), help="the faces folder (liveness/, lfw/)")
    parser.add_argument("--distractors", type=int, default=200, help="LFW people in the gallery (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, dest="json_out", help="write the figures as JSON here")
    parser.add_argument("--cost", action="store_true", help="time the stages of a challenge frame instead")
    parser.add_argument("--rounds", type=int, default=200, help="--cost: timed rounds (default 200)")
    args = parser.parse_args(argv)
    if args.cost:
        return _cost(args)

    pipeline = Pipeline.from_config(parse_config({}))
    thr = {"likely": pipeline.thresholds.likely, "accept": pipeline.thresholds.accept}

    # LFW distractors: one photo per person as their template, a second photo (where there is one) as a probe.
    rows = [line.split(",") for line in (args.data / "lfw" / "labels.csv").read_text().splitlines()[1:]]
    by_person: dict[str, list[str]] = {}
    for path, who in rows:
        by_person.setdefault(who, []).append(path)
    people = sorted(by_person)
    random.Random(args.seed).shuffle(people)
    people = people[: args.distractors]
    lfw_emb, lfw_pid, lfw_probe = [], [], []
    for n, who in enumerate(people):
        for k, rel in enumerate(by_person[who][:2]):
            read = cv2.imread(str(args.data / "lfw" / rel))
            if read is None:
                continue
            image = np.ascontiguousarray(read, dtype=np.uint8)
            faces = select_faces(pipeline.detect(image), "largest", image.shape)
            if not faces:
                continue
            vec = pipeline.embedder.embed([pipeline.prepare(image, faces)[0][0]])[0]
            if k == 0:
                lfw_emb.append(vec)
                lfw_pid.append(n + 2)
            else:
                lfw_probe.append(vec)
        sys.stderr.write(f"\rLFW {n + 1}/{len(people)}")
    sys.stderr.write("\n")

    embedded = {}
    for name in VIDEOS:
        embedded[name] = _embed_video(pipeline, args.data, name)
        sys.stderr.write(f"{name}: {len(embedded[name][1])} of {len(embedded[name][0])} frames with a face\n")

    groups: dict[str, list[float]] = {"closed": [], "near": [], "open": []}
    flipped: dict[str, int] = {"closed": 0, "near": 0, "open": 0}
    quality_failed: dict[str, int] = {"closed": 0, "near": 0, "open": 0}
    drops: list[float] = []  # a closed frame's score below the median of the open frames in the second before it
    best_other: list[float] = []  # the recording's frames against the LFW people (B = this person, A = LFW)
    lfw_vs_person: list[float] = []  # LFW probes against the person's templates (B = LFW, A = this person)
    for held in VIDEOS:
        closed, idx, emb, _ = embedded[held]
        tpl = emb[_template_rows(closed, idx)]
        gallery = np.vstack([tpl, np.asarray(lfw_emb)])
        pids = np.array([MAHIE] * len(tpl) + lfw_pid)
        matcher = Matcher(gallery, pids, ["person"] * len(pids), threshold=thr["accept"], margin=0.0)
        lfw_vs_person += [float(np.max(tpl @ p)) for p in lfw_probe]
        for other in VIDEOS:
            if other == held:
                continue
            o_closed, o_idx, o_emb, o_ok = embedded[other]
            mine_by_frame: dict[int, float] = {}
            for row, i in enumerate(o_idx):
                group = (
                    "closed" if o_closed[i] else "near" if any(o_closed[max(0, i - NEAR) : i + NEAR + 1]) else "open"
                )
                ids, scores = matcher.person_scores(o_emb[row])
                mine = float(scores[ids == MAHIE][0])
                mine_by_frame[i] = mine
                if o_closed[i]:
                    before = [
                        mine_by_frame[j] for j in range(i - 30, i - NEAR) if j in mine_by_frame and not o_closed[j]
                    ]
                    if before:
                        drops.append(float(np.median(before)) - mine)
                groups[group].append(mine)
                flipped[group] += int(ids[0] != MAHIE)
                quality_failed[group] += int(not o_ok[row])
                best_other.append(float(scores[ids != MAHIE][0]))

    impostor = np.array(best_other)
    cuts = (0.36, 0.40, 0.42, 0.45, 0.47)
    report: dict[str, Any] = {
        "recogniser": pipeline.embedder.spec.id,
        "thresholds": thr,
        "templates": f"{TEMPLATES} open-eye frames of one recording; probes: the other two (leave one out)",
        "distractors": len(lfw_emb),
        "same_person": {
            g: {
                **_stats(np.array(v), thr),
                "best_is_someone_else": flipped[g],
                "quality_failed": quality_failed[g],
            }
            for g, v in groups.items()
        },
        "closed_eye_drop": {
            "what": "median score of the open frames in the second before a closed frame, minus the closed frame's",
            "n": len(drops),
            "median": round(float(np.median(drops)), 4),
            "p95": round(float(np.percentile(drops, 95)), 4),
            "max": round(float(np.max(drops)), 4),
        },
        "other_people": {
            "recording_vs_lfw_templates": _stats(impostor, {})
            | {"max": round(float(impostor.max()), 4)}
            | {f"at_or_above_{c:.2f}": int(np.sum(impostor >= c)) for c in cuts},
            "lfw_probes_vs_person": _stats(np.array(lfw_vs_person), {}) | {"max": round(max(lfw_vs_person), 4)},
        },
    }
    likely, accept = f"below_likely_{thr['likely']:.2f}", f"below_accept_{thr['accept']:.2f}"
    for g, s in report["same_person"].items():
        print(
            f"{g:<6} n={s['n']:5d} min {s['min']:.3f} p1 {s['p1']:.3f} p5 {s['p5']:.3f} median {s['median']:.3f} "
            f"below likely {100 * s[likely]:.2f} % "
            f"below accept {100 * s[accept]:.2f} % "
            f"someone else best {s['best_is_someone_else']} quality failed {s['quality_failed']}"
        )
    d = report["closed_eye_drop"]
    print(f"closed-eye drop: n={d['n']} median {d['median']:.3f} p95 {d['p95']:.3f} max {d['max']:.3f}")
    for k, s in report["other_people"].items():
        print(f"{k}: n={s['n']} median {s['median']:.3f} max {s['max']:.3f}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
