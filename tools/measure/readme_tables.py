"""The measured tables of the README and the docs, rendered from the committed JSON results so they cannot drift.

``python -m tools readme-tables [--root DIR] [--results docs/results] [--check]``

Reads ``bench/bench.json`` (``kiosk bench --json``), ``vs_face_recognition/timing.json`` (speed, ``--pairs 0``) and
``vs_face_recognition/vs_face_recognition.json`` (its ``accuracy``: LFW pairs of both libraries) under ``--results``
and renders the Markdown between marker comments (``<!-- NAME:start ... -->`` / ``<!-- NAME:end -->``) of each block
in ``BLOCKS``:

- ``bench`` in ``docs/performance.md``: a "Measured ..." line (date, CPU, cores, SIMD flags, load, configuration), the
  per-stage table, the "other" table and the face_recognition table, each source JSON linked, and the command lines
  that regenerate the JSON;
- ``headline`` in ``README.md``: the few headline figures, each with the command that reproduces it, linking to
  ``docs/performance.md``.

Without ``--check`` it rewrites the files between the markers, nothing else; with ``--check`` it exits 1 with one
line per out-of-date file. A missing file, JSON or marker: one line on stderr, exit 2, nothing written.

Keys added to ``kiosk bench`` later (``face_embedded`` / ``face_not_embedded`` under ``end_to_end_ms_by_frame`` and
``end_to_end_ms_liveness_off``, ``recognizer_floor``) are rendered when present and skipped when absent.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from tools import ROOT
from tools.errors import ToolError, run_tool

PROG = "python -m tools readme-tables"

# Paths under the results folder. Commands name them from the repository root (LINK_BASE); the links in
# docs/performance.md, which sits beside docs/results, are relative to docs/ (DOC_LINK_BASE).
BENCH = "bench/bench.json"
TIMING = "vs_face_recognition/timing.json"
ACCURACY = "vs_face_recognition/vs_face_recognition.json"
LINK_BASE = "docs/results"
DOC_LINK_BASE = "results"
PERFORMANCE = "docs/performance.md"  # where the README's headline figures link to
BENCH_COMMAND = "kiosk bench"
WIDTH = 116  # the README's prose width

# Display names for model ids in the prose; any other id is shown as it is.
NAMES = {
    "yunet": "YuNet",
    "sface": "SFace",
    "sface_int8": "SFace int8",
    "sface_tflite": "SFace (TFLite)",
    "blazeface": "BlazeFace",
    "mtcnn": "MTCNN",
    "facenet": "FaceNet",
    "dlib_resnet": "dlib ResNet",
}
LIVENESS = {"active": "active: face mesh + iris while a challenge runs", "passive": "passive: MiniFASNet"}

Json = Mapping[str, Any]


class TablesError(ToolError):
    """A one-line reason the tables cannot be rendered (missing file, marker or key): exit 2."""

    code = 2


@dataclass(frozen=True)
class Sources:
    bench: Json
    timing: Json
    accuracy: Json


# -- number formatting ----------------------------------------------------------------------------------------------


def fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, halves rounded up as a person would (23.25 → 23.3, 192.5 → 193)."""
    return str(Decimal(repr(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def num(x: float | None) -> str:
    """About three significant figures: 0.031, 1.19, 13.5, 230."""
    if x is None:
        return "–"
    a = abs(x)
    if a == 0:
        return "0"
    if a < 0.1:
        return fixed(x, 1 - math.floor(math.log10(a)))  # two significant figures
    return fixed(x, 2 if a < 10 else 1 if a < 100 else 0)


def pct(x: float) -> str:
    return f"{fixed(100 * x, 2)} %"


def ratio(x: float) -> str:
    return f"{fixed(x, 1)}x"


def bold(text: str, on: bool = True) -> str:
    return f"**{text}**" if on else text


def size_label(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return f"{n:,}"


def mb(x: float) -> str:
    return f"{fixed(x, 0)} MB"


def wrap(paragraph: str) -> list[str]:
    """Prose wrapped like the rest of the README (links and code spans are never split)."""
    return textwrap.wrap(paragraph, WIDTH, break_long_words=False, break_on_hyphens=False)


def link(rel: str) -> str:
    """A results file linked from docs/performance.md, shown by its path from the repository root."""
    return f"[`{LINK_BASE}/{rel}`]({DOC_LINK_BASE}/{rel})"


def name(model_id: str) -> str:
    return NAMES.get(model_id, model_id)


# -- loading --------------------------------------------------------------------------------------------------------


def _read(results: Path, rel: str) -> Json:
    path = results / rel
    if not path.is_file():
        raise TablesError(f"missing {path} (see the commands in docs/performance.md)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TablesError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TablesError(f"{path}: not a JSON object")
    return data


def load_sources(results: Path) -> Sources:
    return Sources(_read(results, BENCH), _read(results, TIMING), _read(results, ACCURACY))


# -- rendering ------------------------------------------------------------------------------------------------------


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(*header), _row(*("---" for _ in header)), *(_row(*r) for r in rows)]


def _dist_cells(d: Any, headline: bool = False) -> list[str]:
    if not isinstance(d, Mapping):
        return [str(d), ""]
    return [bold(num(d.get("median")), headline and d.get("median") is not None), num(d.get("p95"))]


def _splits(by: Json) -> list[list[str]]:
    """The face frames the recogniser ran on and the tracked ones it skipped, when the JSON has them."""
    face_n = by["face"]["n"]
    rows = []
    for key, label in (("face_embedded", "recogniser ran"), ("face_not_embedded", "tracked, not embedded")):
        if key in by:
            rows.append([f"↳ {label} ({by[key]['n']} of {face_n} frames)", *_dist_cells(by[key])])
    return rows


def measured_line(b: Json) -> str:
    m, c, fr, v = b["machine"], b["config"], b["frames"], b["versions"]
    det, rec = c["models"]["detector"], c["models"]["recognizer"]
    rt = c["runtime"]
    threads = (
        f"{rt['intra_op_threads']} intra-op threads"
        if rec["format"] == "onnx"
        else f"{rt['tflite_threads']} TFLite threads"
    )
    config = "default configuration" if c.get("config_file") is None else f"configuration `{c['config_file']}`"
    flags = ", ".join(m["flags"]) or "no listed SIMD flags"
    load = f"{fixed(m['loadavg_start'][0], 2)} → {fixed(m['loadavg_end'][0], 2)}" if m.get("loadavg_end") else "n/a"
    width, height = fr["size"]
    source = str(fr.get("origin") or "LFW")  # "LFW <folder>" or the --source file
    origin = "LFW photos" if source.startswith("LFW") else f"`{Path(source).name}`"
    return (
        f"Measured {b['started_utc'][:10]} on {m['cpu']}, {m['cores']} cores ({flags}), load {load} (1 min), "
        f"{config}: {name(det['id'])} ({det['format']}) at {c['detection']['input_size']} → {name(rec['id'])} "
        f"({rec['format']}), {threads}, `runtime.allow_spinning: {str(rt['allow_spinning']).lower()}`, liveness "
        f"{c['liveness']}; {fr['count']} {width}x{height} frames ({b['loop']['frames_with_face']} with a face) of "
        f"{origin} at {fr['fps']:g} fps, {fr['members_enrolled']} people enrolled; Python {v['python']}, "
        f"onnxruntime {v['onnxruntime']}, OpenCV {v['opencv']}. JSON: {link(BENCH)}."
    )


def stage_table(b: Json) -> list[str]:
    c, st, fr = b["config"], b["stages_ms"], b["frames"]
    det, rec = c["models"]["detector"], c["models"]["recognizer"]
    qa = [f"{num(st['quality'][k])} / {num(st['align'][k])}" for k in ("median", "p95")]
    live_mode = b["loop"]["liveness"]
    rows: list[list[str]] = [
        ["decode (JPEG)", *_dist_cells(st["decode"])],
        [f"detect ({name(det['id'])}, {c['detection']['input_size']})", *_dist_cells(st["detect"])],
        ["quality / align", *qa],
        [f"embed ({name(rec['id'])}, 1 face)", *_dist_cells(st["embed"])],
        [f"match ({fr['members_enrolled']} people)", *_dist_cells(st["match"])],
        [f"liveness ({LIVENESS.get(live_mode, live_mode)})", *_dist_cells(st["liveness"])],
    ]
    by, off = b["end_to_end_ms_by_frame"], b.get("end_to_end_ms_liveness_off")
    if off is not None:
        rows.append(
            [bold("end to end, frame with a face, real door loop, liveness off"), *_dist_cells(off["face"], True)]
        )
        rows += _splits(off)
        rows.append([f"end to end, frame with a face, liveness {live_mode}", *_dist_cells(by["face"])])
    else:
        label = f"end to end, frame with a face, real door loop, liveness {live_mode}"
        rows.append([bold(label), *_dist_cells(by["face"], True)])
    rows += _splits(by)
    rows.append(["end to end, empty frame", *_dist_cells(by["empty"])])
    dec = c["decision"]
    rows.append(
        [
            f"face appears → door pulse ({fr['fps']:g} fps camera, {dec['frames_needed']}-of-{dec['window']} vote)",
            *_dist_cells(b["decision_latency_ms"]),
        ]
    )
    return _table(["stage, ms per frame", "median", "p95"], rows)


def other_table(b: Json) -> list[str]:
    match = b["match_ms"]
    sizes = sorted(match, key=int)
    medians = [bold(f"{num(match[s]['median'])} ms", i == len(sizes) - 1) for i, s in enumerate(sizes)]
    rows = [[f"1:N match over {' / '.join(size_label(int(s)) for s in sizes)} templates", " / ".join(medians)]]
    cold = b.get("cold_start")
    if cold:
        s = cold["since_launch_s"]
        rows.append(
            [
                "cold start: process start → models warm → first decision",
                f"**{fixed(b['cold_start_s'], 2)} s** (models warm at {fixed(s['models_warm'], 2)} s)",
            ]
        )
        rows.append(
            [
                "peak RSS: door loop process / cold-start process",
                f"**{mb(b['peak_rss_mb'])}** / {mb(cold['peak_rss_mb'])}",
            ]
        )
    else:
        rows.append(["cold start", "not measured (`--skip-cold-start`)"])
        rows.append(["peak RSS: door loop process", f"**{mb(b['peak_rss_mb'])}**"])
    floor = b.get("recognizer_floor")
    if floor:
        rows.append(
            [
                f"{name(floor.get('model', b['config']['models']['recognizer']['id']))} embed vs its compute floor "
                f"({floor['gflop_per_face']} GFLOP / ({floor['core_peak_gflops']:g} GFLOP/s x {floor['threads']} "
                "threads))",
                f"{num(floor['embed_ms_median'])} ms vs {num(floor['floor_ms'])} ms = **{fixed(floor['ratio'], 2)}x**",
            ]
        )
    return _table(["other", "result"], rows)


def _fr_intro(t: Json) -> str:
    fr = t["libraries"]["face_recognition"]["versions"]
    m = t["machine"]
    after = t.get("loadavg_after")
    load = f"{fixed(m['loadavg'][0], 2)} → {fixed(after[0], 2)}" if after else f"{fixed(m['loadavg'][0], 2)}"
    return (
        f"Side by side with `face_recognition` {fr['face_recognition']} (dlib {fr['dlib']} via "
        f"{fr.get('dlib_distribution', 'dlib')}, its documented HOG detection + encoding, installed in its own "
        f"throwaway venv) on the same {t['frames']['n']} frames, {t['runs_per_library']} alternating runs each, "
        f"measured {t['started_utc'][:10]} on {m['cpu']}, {m['cores']} cores, load {load} (1 min). "
        f"JSON: {link(TIMING)}; LFW accuracy: {link(ACCURACY)}."
    )


def fr_table(t: Json, a: Json) -> list[str]:
    s = t["summary"]
    fr, fk, r = s["face_recognition"], s["face_kiosk"], s["ratio"]
    fr_faster = fr["ms"]["median"] < fk["ms"]["median"]
    rows = [
        [
            "median / p95 ms",
            bold(f"{num(fr['ms']['median'])} / {num(fr['ms']['p95'])}", fr_faster),
            bold(f"{num(fk['ms']['median'])} / {num(fk['ms']['p95'])}", not fr_faster),
            f"{bold(ratio(r['median_ms']))} / {ratio(r['p95_ms'])}",
        ],
        ["frames per second", f"{fixed(fr['fps'], 1)}", f"{fixed(fk['fps'], 1)}", ratio(r["fps"])],
        [
            "faces found",
            f"{fr['frames_with_face']} / {fr['frames']}",
            f"{fk['frames_with_face']} / {fk['frames']}",
            "",
        ],
    ]
    acc = a.get("accuracy")
    if acc:
        afr, afk = acc["face_recognition"], acc["face_kiosk"]
        fr_better = afr["accuracy_10fold"] > afk["accuracy_10fold"]
        tar_fr, tar_fk = afr["tar_at_far"]["1e-3"]["tar"], afk["tar_at_far"]["1e-3"]["tar"]
        n = f"{acc['n_pairs']:,}"
        rows += [
            [
                f"LFW pairs ({n}), 10-fold accuracy",
                bold(f"{pct(afr['accuracy_10fold'])} ± {fixed(100 * afr['accuracy_10fold_std'], 2)}", fr_better),
                bold(f"{pct(afk['accuracy_10fold'])} ± {fixed(100 * afk['accuracy_10fold_std'], 2)}", not fr_better),
                "",
            ],
            [
                f"LFW pairs, at the default threshold (FR tolerance {afr['tolerance']:g} / kiosk "
                f"{afk['accept_threshold']:g})",
                f"{pct(afr['accuracy_at_tolerance'])} ({_far(afr['far_at_tolerance'])} false accepts)",
                f"{pct(afk['accuracy_at_threshold'])} ({_far(afk['far_at_threshold'])} false accepts)",
                "",
            ],
            ["TAR at FAR 0.1 %", bold(pct(tar_fr), tar_fr > tar_fk), bold(pct(tar_fk), tar_fk > tar_fr), ""],
        ]
    return _table(
        [f"per {t['frames']['width']}x{t['frames']['height']} frame", "face_recognition", "face-kiosk", "ratio"], rows
    )


def _far(x: float) -> str:
    return "0" if x == 0 else pct(x)


def _with_json(command: str, rel: str) -> str:
    return command if "--json" in command.split() else f"{command} --json {LINK_BASE}/{rel}"


def commands(src: Sources) -> list[str]:
    bench_cmd = _with_json(str(src.bench.get("command") or BENCH_COMMAND), BENCH)
    lines = [
        "```sh",
        f"{bench_cmd}   # ~15 s; --threads N, --backend tflite, --source FILE, --gallery-sizes",
        f"{_with_json(str(src.timing['command']), TIMING)}   # installs face_recognition in its own venv",
    ]
    acc = src.accuracy.get("accuracy")
    if "command" in src.accuracy:
        note = ""
        if acc:
            minutes = round(acc["face_recognition"].get("seconds", 0) / 60)
            note = f"   # + LFW accuracy, ~{minutes} min for face_recognition's side" if minutes else ""
        lines.append(f"{_with_json(str(src.accuracy['command']), ACCURACY)}{note}")
    lines += [f"{PROG}   # then this, to regenerate the tables above", "```"]
    return lines


def render(src: Sources) -> str:
    """The Markdown between the ``bench`` markers in docs/performance.md (without them)."""
    try:
        parts = [
            *wrap(measured_line(src.bench)),
            "",
            *stage_table(src.bench),
            "",
            *other_table(src.bench),
            "",
            *wrap(_fr_intro(src.timing)),
            "",
            *fr_table(src.timing, src.accuracy),
            "",
            *commands(src),
        ]
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise TablesError(f"a results JSON lacks an expected field: {type(exc).__name__}: {exc}") from exc
    return "\n".join(parts)


def headline(src: Sources) -> str:
    """The Markdown between the ``headline`` markers in README.md: 2-4 figures, each with its command."""
    try:
        b, t = src.bench, src.timing
        fps = b["frames"]["fps"]
        vote = f"{b['config']['decision']['frames_needed']}-of-{b['config']['decision']['window']}"
        bench_cmd = f"`{src.bench.get('command') or BENCH_COMMAND}`"
        off, by, mode = b.get("end_to_end_ms_liveness_off"), b["end_to_end_ms_by_frame"], b["loop"]["liveness"]
        face = bold(f"{num((off or by)['face']['median'])} ms")
        if off is not None:
            face += f" ({num(by['face']['median'])} ms with liveness {mode})"
        live = "off" if off is not None else mode
        # kiosk bench times the pulse with liveness off when it is configured on (a still photo cannot pass it).
        pulse_live = str(b["decision_latency_ms"].get("liveness") or mode).split()[0]
        s = t["summary"]
        fr, fk = s["face_recognition"]["ms"]["median"], s["face_kiosk"]["ms"]["median"]
        fr_version = t["libraries"]["face_recognition"]["versions"]["face_recognition"]
        width, height = t["frames"]["width"], t["frames"]["height"]
        rows = [
            [
                f"face appears → door pulse ({fps:g} fps camera, {vote} vote, liveness {pulse_live}), median",
                bold(f"{num(b['decision_latency_ms']['median'])} ms"),
                bench_cmd,
            ],
            [
                f"frame with a face, end to end in the real door loop (liveness {live}), median",
                face,
                bench_cmd,
            ],
            [
                f"ms per {width}x{height} frame, median: face-kiosk vs `face_recognition` {fr_version}",
                f"{bold(num(fk))} vs {num(fr)} ({ratio(s['ratio']['median_ms'])})",
                f"`{t['command']}`",
            ],
        ]
        acc = src.accuracy.get("accuracy")
        if acc:
            afk, afr = acc["face_kiosk"], acc["face_recognition"]
            rows.append(
                [
                    f"LFW pairs ({acc['n_pairs']:,}), 10-fold accuracy: face-kiosk vs `face_recognition`",
                    f"{bold(pct(afk['accuracy_10fold']))} vs {pct(afr['accuracy_10fold'])}",
                    f"`{src.accuracy['command']}`",
                ]
            )
        # The accuracy run's date and machine, where its JSON records them (older ones do not).
        sources = [b, t, *([src.accuracy] if acc and {"started_utc", "machine"} <= src.accuracy.keys() else [])]
        dates = " and ".join(sorted({str(j["started_utc"])[:10] for j in sources}))
        machines = " and ".join(dict.fromkeys(f"{j['machine']['cpu']}, {j['machine']['cores']} cores" for j in sources))
        c = b["config"]
        config = "default configuration" if c.get("config_file") is None else f"configuration `{c['config_file']}`"
        intro = (
            f"Measured {dates} on {machines}, {config}; the method, the machine and every other figure are in "
            f"[{PERFORMANCE}]({PERFORMANCE})."
        )
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise TablesError(f"a results JSON lacks an expected field: {type(exc).__name__}: {exc}") from exc
    return "\n".join([*wrap(intro), "", *_table(["figure", "result", "reproduce"], rows)])


# -- the files ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A generated block: its marker name, the file it lives in (from the repository root) and its renderer."""

    name: str
    path: str
    render: Callable[[Sources], str]

    @property
    def start_prefix(self) -> str:
        return f"<!-- {self.name}:start"

    @property
    def start(self) -> str:
        return f"{self.start_prefix} (generated by {PROG} from docs/results; do not edit) -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}:end -->"


BENCH_BLOCK = Block("bench", PERFORMANCE, render)
HEADLINE_BLOCK = Block("headline", "README.md", headline)
BLOCKS = (BENCH_BLOCK, HEADLINE_BLOCK)
START, END = BENCH_BLOCK.start, BENCH_BLOCK.end


def replace_section(text: str, body: str, block: Block = BENCH_BLOCK) -> str:
    """``text`` with everything between the block's marker lines replaced by ``body`` (the start marker normalised)."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(block.start_prefix)]
    ends = [i for i, line in enumerate(lines) if line.strip() == block.end]
    if len(starts) != 1 or len(ends) != 1:
        found = f"{len(starts)} start and {len(ends)} end marker(s)"
        raise TablesError(f"need exactly one '{block.start_prefix} ... -->' and one '{block.end}' line, found {found}")
    s, e = starts[0], ends[0]
    if e < s:
        raise TablesError(f"'{block.end}' comes before '{block.start_prefix}'")
    return "\n".join([*lines[:s], block.start, "", body, "", block.end, *lines[e + 1 :]])


def difference(old: str, new: str) -> str:
    """One line: how many lines change and the first of them."""
    a, b = old.split("\n"), new.split("\n")
    ops = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"]
    removed = sum(i2 - i1 for _, i1, i2, _, _ in ops)
    added = sum(j2 - j1 for _, _, _, j1, j2 in ops)
    _, i1, i2, j1, j2 = ops[0]
    was = repr(a[i1][:70]) if i2 > i1 else "(nothing)"
    now = repr(b[j1][:70]) if j2 > j1 else "(nothing)"
    return f"{removed} line(s) out, {added} in; first at line {i1 + 1}: {was} → {now}"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    files = ", ".join(sorted({b.path for b in BLOCKS}))
    p = argparse.ArgumentParser(
        prog=PROG,
        description=f"Render the measured tables in {files} from docs/results (between their markers).",
    )
    p.add_argument("--root", type=Path, default=ROOT, help=f"folder holding {files} (default: the repository root)")
    p.add_argument(
        "--results", type=Path, default=ROOT / "docs" / "results", help="results folder (default docs/results)"
    )
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    return p.parse_args(argv)


def updated(root: Path, src: Sources) -> dict[Path, tuple[str, str]]:
    """Every file with a block: its text now and with its blocks rendered (nothing written)."""
    out: dict[Path, tuple[str, str]] = {}
    for block in BLOCKS:
        path = root / block.path
        if path not in out:
            if not path.is_file():
                raise TablesError(f"missing {path}")
            text = path.read_text(encoding="utf-8")
            out[path] = (text, text)
        old, new = out[path]
        try:
            out[path] = (old, replace_section(new, block.render(src), block))
        except TablesError as exc:
            raise TablesError(f"{path}: {exc}") from exc
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    return run_tool(PROG, lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    files = updated(args.root, load_sources(args.results))
    stale = {path: (old, new) for path, (old, new) in files.items() if new != old}
    if not stale:
        print(f"{', '.join(str(p) for p in files)}: tables up to date")
        return 0
    for path, (old, new) in stale.items():
        if args.check:
            print(f"{path}: tables out of date ({difference(old, new)}); run {PROG}")
        else:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: tables rewritten from {args.results}")
    return 1 if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
