"""``kiosk run`` (the door loop) and ``kiosk events`` (the decision log)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from kiosk.cli._output import emit_json, fmt, table
from kiosk.config import Config
from kiosk.door.decide import Decision
from kiosk.errors import TamperedError
from kiosk.gallery.open import open_gallery


def _since(text: str) -> datetime:
    """An ISO date/time, or a duration back from now: 30m, 12h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time or a duration like 12h: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the door loop (camera → decision → relay)", description=cmd_run.__doc__)
    p.add_argument("--source", help="override camera.source: a camera index, /dev/videoN, URL, video file or folder")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (testing)")
    p.add_argument(
        "--no-realtime", action="store_true", help="replay files as fast as possible, every frame (no frame drops)"
    )
    p.add_argument("--json", action="store_true", help="print the final statistics as JSON")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("events", help="show recorded access decisions and door events", description=cmd_events.__doc__)
    p.add_argument("--since", type=_since, help="ISO date/time, or a duration back from now (30m, 12h, 7d)")
    p.add_argument("--person", help="only events of this person (name)")
    p.add_argument("--limit", type=int, help="only the newest N events")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print as JSON")
    out.add_argument("--csv", action="store_true", help="print as CSV")
    p.set_defaults(func=cmd_events)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    v = verbs.add_parser(
        "verify", help="check the event log's hash chain (tamper evidence)", description=cmd_events_verify.__doc__
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_events_verify)


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    """Run the door loop until SIGTERM/SIGINT (or the end of a replayed file): newest frame → detect → track →
    match → K-of-N decision → relay pulse, one log line and one event per decision. Under systemd it sends READY
    once models are warm and watchdog pings from the frame loop."""
    from kiosk.door.service import run_kiosk

    def show(d: Decision, door: str) -> None:
        if not args.json:
            who = d.name or "unknown"
            print(f"{d.outcome:8} {who:24} score {fmt(d.score)}  frames {d.frames_used}  door {door}  ({d.reason})")
            sys.stdout.flush()

    def prompt(track_id: int, text: str) -> None:
        if not args.json:
            print(f"{'check':8} track {track_id}: {text}", flush=True)

    stats = run_kiosk(
        cfg,
        source=args.source,
        realtime=False if args.no_realtime else None,
        max_frames=args.max_frames,
        on_decision=show,
        on_prompt=prompt,
    )
    summary = stats.as_dict()
    if args.json:
        emit_json(summary)
    else:
        print(
            f"{summary['frames']} frames at {summary['fps']} fps (processing), {summary['granted']} granted, "
            f"{summary['denied']} denied, median latency to a grant {summary['grant_latency_ms_median']} ms"
        )
    return 0


def cmd_events(args: argparse.Namespace, cfg: Config) -> int:
    """Show recorded events, oldest first: access decisions (granted/denied with score, threshold, frames,
    liveness, latency, door action) and door events (forced open, held open, exit requests)."""
    with open_gallery(cfg, need_key=False) as g:
        events = g.events(since=args.since, person=args.person, limit=args.limit)
    if args.json:
        emit_json(events)
        return 0
    columns = ["id", "ts", "kind", "outcome", "person_name", "score", "threshold", "frames", "liveness", "latency_ms",
               "door_action"]  # fmt: skip
    if args.csv:
        w = csv.writer(sys.stdout)
        w.writerow([*columns, "detail"])
        for e in events:
            w.writerow([*(e.get(c) for c in columns), json.dumps(e.get("detail"), ensure_ascii=False)])
        return 0
    if not events:
        print("no events")
        return 0
    rows = [
        [str(e["id"]), str(e["ts"]), e["kind"], e["outcome"], e.get("person_name") or "-", fmt(e.get("score")),
         str(e.get("frames") or "-"), e.get("liveness") or "-", e.get("door_action") or "-"]
        for e in events
    ]  # fmt: skip
    print(table(rows, ["id", "time", "kind", "outcome", "person", "score", "frames", "liveness", "door"]))
    return 0


def cmd_events_verify(args: argparse.Namespace, cfg: Config) -> int:
    """Walk the event log's hash chain (each event carries the hash of its predecessor) and report the first
    broken link: an event edited, deleted or inserted behind the kiosk's back. Exit TAMPERED when broken."""
    with open_gallery(cfg, need_key=False) as g:
        report = g.verify_events()
    if args.json:
        emit_json(dataclasses.asdict(report))
    if not report.ok:
        reason = report.reason or "the hash chain is broken"
        prefix = f"event {report.first_broken_id}: "
        raise TamperedError(reason if reason.startswith(prefix) else prefix + reason)
    if not args.json:
        head = f"head {report.head_id} {report.head_hash}" if report.head_id is not None else "empty log"
        print(f"{report.checked} events, chain intact, {head}")
    return 0
