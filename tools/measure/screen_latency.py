"""Decision → door screen: how long after the loop decides does the person at the door see it, in a real browser.

``python -m tools.measure.screen_latency [--decisions 60] [--json OUT]`` (also ``python -m tools screen-latency``)

The whole path runs as installed: the real door loop (``run_kiosk``, screen on, liveness off) on the astronaut
(enrolled, let in) and the cameraman (a stranger, refused) taking turns before a scripted live camera; the loop's
publisher → ``state.sock`` → ``kiosk web``'s ``DoorLink`` → ``/door/state`` (SSE) → the page in headless Debian
Chromium. The decision is timestamped with ``time.time()`` in the loop's ``on_decision`` hook (the door has been
acted on, the screen not yet told); the page records ``performance.timeOrigin + performance.now()`` in a
MutationObserver the moment its DOM shows that result (``data-result-seq``), and again at the next animation frame
(painted). Both clocks are this machine's wall clock; their offset is measured (the round trip of an evaluate, the
shortest of 20) and taken out. Result ``k`` on the page is the loop's ``k``-th decision (the screen numbers them);
a decision the page never showed (two within one state update) is counted as missed, not timed.

Median and p95 are nearest-rank (``kiosk.stats``). Goal: p95 ≤ 150 ms. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.errors import ToolError
from tools.measure.browser import LiveServer, launch_chromium

GOAL_MS = 150.0
OBSERVER = """(() => {
  window.shown = [];
  new MutationObserver(() => {
    const seq = Number(document.body.dataset.resultSeq);
    if (!seq || window.shown.some((s) => s.seq === seq)) return;
    const item = { seq, outcome: document.body.dataset.outcome, dom: performance.timeOrigin + performance.now() };
    window.shown.push(item);
    requestAnimationFrame(() => { item.frame = performance.timeOrigin + performance.now(); });
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-result-seq"] });
})();"""


def clock_offset_s(page: Any, samples: int = 20) -> tuple[float, float]:
    """(page clock − time.time(), ± half the round trip) from the evaluate with the shortest round trip."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        t0 = time.time()
        js = float(page.evaluate("performance.timeOrigin + performance.now()")) / 1000.0
        t1 = time.time()
        if best is None or (t1 - t0) < best[1] * 2:
            best = (js - (t0 + t1) / 2, (t1 - t0) / 2)
    assert best is not None
    return best


def pair(
    decided: list[tuple[float, tuple[str, str | None]]], shown: list[dict[str, Any]], offset_s: float
) -> tuple[list[float], list[float], int]:
    """Latencies (ms) to the DOM and to the next painted frame, and the number of decisions never shown. The loop's
    ``k``-th decision is result ``seq == k`` on the page; the first is left out (the page may still be settling)."""
    by_seq = {int(s["seq"]): s for s in shown}
    dom_ms: list[float] = []
    painted_ms: list[float] = []
    missed = mismatched = 0
    for k, (t_decided, (outcome, _name)) in enumerate(decided[1:], start=2):
        s = by_seq.get(k)
        if s is None:
            missed += 1
            continue
        if (s.get("outcome") == "granted") != (outcome == "granted"):  # the screen tells denied from unknown
            mismatched += 1
            continue
        dom_ms.append((s["dom"] / 1000.0 - offset_s - t_decided) * 1000.0)
        if s.get("frame") is not None:
            painted_ms.append((s["frame"] / 1000.0 - offset_s - t_decided) * 1000.0)
    if mismatched:
        raise ToolError(f"{mismatched} results on the page do not match the loop's decisions in order")
    return dom_ms, painted_ms, missed


def measure(decisions: int = 60, viewport: tuple[int, int] = (1024, 600), timeout_s: float = 600.0) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from kiosk.lab.door_thread import LoopThread, astronaut_door
    from kiosk.lab.machine import describe, loadavg
    from kiosk.screen.client import DoorLink
    from kiosk.stats import dist
    from kiosk.web.scripted import ScriptedServices, door_app

    # a short path: a Unix socket path holds at most 107 bytes
    root = Path(tempfile.mkdtemp(prefix="kscrlat-", dir="/tmp"))
    try:
        door = astronaut_door(root, root / "run", liveness="off", result_s=0.5)
        # turns: the astronaut (let in), nobody, the stranger (refused), nobody; a new track, a new decision each time
        frames = door.held[:10] + door.empty + door.stranger[:10] + door.empty
        server = LiveServer(door_app(ScriptedServices(door.cfg, DoorLink(door.cfg.runtime_dir))))
        url = server.start()
        try:
            with sync_playwright() as pw:
                browser = launch_chromium(pw)
                try:
                    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
                    page = context.new_page()
                    page.add_init_script(OBSERVER)
                    page.goto(url + "/door", wait_until="domcontentloaded")
                    loop = LoopThread(door.cfg, frames).start()
                    try:
                        page.wait_for_selector("body[data-service='ok']", timeout=120_000)
                        offset_s, offset_err_s = clock_offset_s(page)
                        deadline = time.monotonic() + timeout_s
                        while len(loop.decided_at) < decisions + 1 and time.monotonic() < deadline:
                            page.wait_for_timeout(250)
                        page.wait_for_timeout(500)  # the last decision reaches the page
                        shown: list[dict[str, Any]] = page.evaluate("window.shown")
                    finally:
                        loop.stop()
                finally:
                    browser.close()
        finally:
            server.stop()
        decided = list(zip(loop.decided_at, loop.decisions, strict=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if len(decided) < decisions:
        raise ToolError(f"only {len(decided)} decisions within {timeout_s:g} s (asked for {decisions})")

    dom_ms, painted_ms, missed = pair(decided[: decisions + 1], shown, offset_s)
    machine = describe()
    machine["loadavg_end"] = loadavg()
    return {
        "what": "decision (loop on_decision, time.time) -> door screen DOM shows the result (Chromium)",
        "decisions": len(dom_ms) + missed,
        "missed": missed,
        "dom_ms": dist(dom_ms, 1),
        "painted_ms": dist(painted_ms, 1),
        "min_ms": round(min(dom_ms), 1) if dom_ms else None,
        "max_ms": round(max(dom_ms), 1) if dom_ms else None,
        "goal_p95_ms": GOAL_MS,
        "clock_offset_ms": round(offset_s * 1000, 2),
        "clock_offset_err_ms": round(offset_err_s * 1000, 2),
        "viewport": list(viewport),
        "outcomes": {o: sum(1 for _, (oo, _n) in decided if oo == o) for o in {d[1][0] for d in decided}},
        "machine": machine,
        "samples_ms": [round(v, 2) for v in dom_ms],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.measure.screen_latency", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--decisions", type=int, default=60, help="decisions to time (at least 50; default 60)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures and every sample here")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the decisions")
    args = parser.parse_args(argv)
    if args.decisions < 50:
        raise ToolError(f"--decisions: at least 50 for a p95, got {args.decisions}", code=2)
    out = measure(args.decisions, timeout_s=args.timeout)
    d, p = out["dom_ms"], out["painted_ms"]
    print(
        f"decision -> door screen over {out['decisions']} decisions ({out['missed']} not shown): "
        f"DOM median {d['median']} ms, p95 {d['p95']} ms (min {out['min_ms']}, max {out['max_ms']}); "
        f"painted median {p['median']} ms, p95 {p['p95']} ms; goal p95 <= {GOAL_MS:g} ms "
        f"({'met' if d['p95'] is not None and d['p95'] <= GOAL_MS else 'NOT met'})"
    )
    print(
        f"clock offset page - python {out['clock_offset_ms']} ms ± {out['clock_offset_err_ms']} ms; "
        f"CPU {out['machine']['cpu']}, {out['machine']['cores_usable']} usable cores"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from tools.errors import run_tool

    raise SystemExit(run_tool("screen_latency", lambda: main()))
