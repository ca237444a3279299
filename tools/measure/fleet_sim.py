"""A whole site on this machine: a nats-server (the wheel's), the hub in its own process and N real doors
(``FleetDoor`` with real SQLite galleries) in a few worker processes; measures what issue #18 asks of the fleet.

Scenarios (``--scenario``, ``all`` runs each in turn on a fresh site):

- ``revocation``: ``--doors`` (200) doors holding ``--people`` (1000) people, one 512-d template each, encrypted with
  the site key, synced through NATS all at once (timed: ``initial_sync``); with ``--sync-sample K`` only K doors sync
  and the others get a copy of one synced gallery (``seeded_by_copy``), their consumers starting at its sequence + 1
  as a door with a missing consumer asks. Then ``--revocations`` people are disabled or removed at the hub one at a
  time, ``--gap`` seconds apart: for each (door, revocation), hub commit (the time before the call) -> the door's
  apply that took them out of its match matrix (``stats.applied_at``); every door's matrix is checked afterwards.
- ``catch-up``: a door behind a TCP proxy is cut off while the hub makes ``--changes`` (1000) changes, 10 % of them
  revocations; heal; time to a replica digest equal to the hub's, and the latest moment (sampled every ~2 ms) a
  revoked person was still in the door's matrix, both from the heal.
- ``events``: ``--doors`` (50) doors writing ``--rate`` (5) events a second each through their galleries for
  ``--minutes`` (10); nats-server killed (SIGKILL) and restarted at 30 % of the run, the hub at 60 %;
  ``--partitioned`` (10) doors cut off for the whole run, healed at the end. Then: every (door, id) at the hub
  exactly once with the door's own row, every chain verified to its head, the time to drain after the heal.
- ``resync``: one door holding ``--resync-people`` (100k) people resyncs in full; its matrix is sampled every ~2 ms.

Usage: ``python -m tools fleet-sim [--scenario revocation|catch-up|events|resync|all] [--doors N] [--minutes M]
[--json OUT]``. Top-level keys of the JSON (None when the scenario did not run): ``revocation_p99_s``,
``catch_up_s``, ``events_produced``, ``events_lost``, ``events_duplicated``, ``chains_intact``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kiosk.fleet import hubdb
from kiosk.fleet.broker import NatsServer, free_port
from kiosk.fleet.protocol import digest
from kiosk.gallery import Gallery
from kiosk.lab.machine import describe, loadavg
from kiosk.stats import percentile
from tools.errors import ToolError
from tools.measure.fleet_procs import DIM, SimSite, WorkerSpec, bulk_enroll, hub_main, template, worker_main

log = logging.getLogger(__name__)
CTX = mp.get_context("spawn")  # no sqlite connection or event loop is inherited by a child
SCENARIOS = ("revocation", "catch-up", "events", "resync")
TOP_KEYS = ("revocation_p99_s", "catch_up_s", "events_produced", "events_lost", "events_duplicated", "chains_intact")


def _dist(values: list[float]) -> dict[str, Any]:
    """p50/p95/p99/max (nearest rank: ``kiosk.stats.percentile``) in seconds, and n."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 4),
        "p95": round(percentile(values, 95), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0.0 elsewhere or when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by named processes between ``start`` and ``stop``, as a share of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0, self.c0 = time.time(), {k: cpu_s(p) for k, p in pids.items()}

    def stop(self) -> dict[str, Any]:
        wall = time.time() - self.t0
        used = {k: cpu_s(p) - self.c0[k] for k, p in self.pids.items()}
        return {"wall_s": round(wall, 1), "cores_used": {k: round(v / wall, 3) for k, v in used.items()}}


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ToolError(f"fleet-sim: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


# -- the site's processes ------------------------------------------------------------------------------------------


class HubProcess:
    def __init__(self, site: SimSite, url: str) -> None:
        self.site, self.url = site, url
        self.proc: Any = None
        self.start()

    def start(self) -> None:
        self.proc = CTX.Process(target=hub_main, args=(str(self.site.root), self.url), name="fleet-hub")
        self.proc.start()

    def kill(self) -> None:
        """SIGKILL by its PID: a crash, no clean stop."""
        self.proc.kill()
        self.proc.join()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()  # SIGTERM: the hub stops cleanly
            self.proc.join(15)
            if self.proc.is_alive():
                self.kill()


class Workers:
    """Door worker processes; ``call`` sends one command to every worker (or those holding ``doors``)."""

    def __init__(
        self, site: SimSite, url: str, doors: list[str], workers: int, proxied: list[str] | None = None
    ) -> None:
        self.site = site
        proxied = proxied or []
        n = max(1, min(workers, len(doors)))
        self.parts = [doors[i::n] for i in range(n)]
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i, part in enumerate(self.parts):
            parent, child = CTX.Pipe()
            spec = WorkerSpec(str(site.root), url, part, [d for d in proxied if d in part])
            proc = CTX.Process(target=worker_main, args=(spec, child), name=f"fleet-doors-{i}")
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def call(self, cmd: str, arg: Any = None, doors: list[str] | None = None, timeout_s: float = 120.0) -> list[Any]:
        chosen = [i for i, part in enumerate(self.parts) if doors is None or set(part) & set(doors)]
        for i in chosen:
            self.conns[i].send((cmd, arg if doors is None else (arg or [d for d in doors if d in self.parts[i]])))
        out = []
        for i in chosen:
            if not self.conns[i].poll(timeout_s):
                raise ToolError(f"fleet-sim: door worker {i} did not answer {cmd!r} within {timeout_s:g} s")
            reply = self.conns[i].recv()
            if isinstance(reply, Exception):
                raise ToolError(f"fleet-sim: door worker {i}: {cmd}: {reply!r}")
            out.append(reply)
        return out

    def merged(self, cmd: str, arg: Any = None, doors: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.call(cmd, arg, doors):
            out.update(part)
        return out

    def wait_ready(self, people: int, since: float, timeout_s: float) -> float:
        def ready() -> bool:
            return not any(self.call("ready", (people, since)))

        wait_for(ready, timeout_s, f"every door to hold {people} people and confirm its sync", every_s=0.5)
        return time.time()

    def stop(self) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        try:
            for part in self.call("stop", timeout_s=300):
                errors.update(part)
        except ToolError as err:  # reported, and the processes killed below
            errors["workers"] = str(err)
        finally:
            for proc in self.procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        return errors


@contextmanager
def running_site(root: Path, doors: list[str]) -> Iterator[tuple[SimSite, NatsServer]]:
    site = SimSite(root).create(doors)
    server = NatsServer(site.broker_config(free_port()), root / "broker")
    with server:
        yield site, server


def hub_published(site: SimSite) -> bool:
    """The hub's outbox is empty: every change is in the stream (with its digest)."""
    with site.hub_gallery() as g:
        left = g._rows("SELECT count(*) AS n FROM fleet_outbox")[0]["n"]
        return int(left) == 0 and int(hubdb.meta(g, "people_stream_seq", "0")) > 0


def hub_digest(site: SimSite) -> str:
    with site.hub_gallery() as g:
        return digest(hubdb.live_revisions(g))


def door_ids(n: int) -> list[str]:
    return [f"d{i:03d}" for i in range(n)]


# -- scenarios -------------------------------------------------------------------------------------------------


def revocation(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    doors = door_ids(args.doors or 200)
    sample = doors[: max(1, min(args.sync_sample, len(doors)))] if args.sync_sample else doors
    out: dict[str, Any] = {"doors": len(doors), "people": args.people, "templates_per_person": 1, "dim": DIM}
    with running_site(root, doors) as (site, server):
        with site.hub_gallery() as g:
            people = bulk_enroll(g, 0, args.people)
        hub = HubProcess(site, server.url)
        try:
            t0 = time.time()
            wait_for(lambda: hub_published(site), 600, "the hub to publish the gallery")
            out["hub_publish_s"] = round(time.time() - t0, 2)
            # Initial sync through NATS of the sample doors (by default every door), all at once.
            t0 = time.time()
            w = Workers(site, server.url, sample, args.workers)
            done = w.wait_ready(args.people, t0, 1800)
            secs = done - t0
            out["initial_sync"] = {
                "doors": len(sample),
                "records": len(sample) * args.people,
                "seconds": round(secs, 2),
                "records_per_s": round(len(sample) * args.people / secs, 1),
                "note": "from starting the worker processes (imports, key request, consumer) to every door synced",
            }
            out["seeded_by_copy"] = len(sample) < len(doors)
            out["synced_through_nats"] = len(sample)
            if out["seeded_by_copy"]:
                out["sample_door_errors"] = w.stop()
                seed = site.door_db(sample[0])
                for door in doors[len(sample) :]:
                    dst = site.door_db(door)
                    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    shutil.copy2(seed, dst)  # closed cleanly: no WAL left; consumers start at applied_seq + 1
                t0 = time.time()
                w = Workers(site, server.url, doors, args.workers)
            try:
                out["all_doors_ready_s"] = round(w.wait_ready(args.people, t0, 1800) - t0, 2)
                pids = {"nats-server": server.proc.pid if server.proc else 0, "hub": hub.proc.pid}
                pids |= {f"doors-{i}": p.pid for i, p in enumerate(w.procs)}
                time.sleep(2.0)
                idle = CpuMeter(pids)
                time.sleep(10.0)
                out["cpu_idle"] = idle.stop()
                busy = CpuMeter(pids)
                rng = random.Random(18)
                revoked = rng.sample(people, min(args.revocations, len(people)))
                committed: dict[int, float] = {}
                how: dict[str, int] = {"disabled": 0, "removed": 0}
                with site.hub_gallery() as g:
                    for i, pid in enumerate(revoked):
                        t = time.time()  # before the call: the commit is inside it (conservative)
                        if i % 2:
                            g.remove(pid)
                            how["removed"] += 1
                        else:
                            g.set_enabled(pid, False)
                            how["disabled"] += 1
                        committed[pid] = t
                        time.sleep(args.gap)

                def revoked_at() -> dict[str, dict[int, float | None]]:
                    """door -> person -> when the revocation took effect there; None: not yet (``applied_at`` also
                    holds the person's earlier changes, the initial sync among them: only a later one counts)."""
                    got = w.merged("applied", revoked)
                    return {
                        d: {p: t if t is not None and t >= committed[p] else None for p, t in per.items()}
                        for d, per in got.items()
                    }

                def all_applied() -> dict[str, dict[int, float | None]] | None:
                    got = revoked_at()
                    return got if all(t is not None for per in got.values() for t in per.values()) else None

                try:
                    applied = wait_for(all_applied, 120, "every door to apply every revocation", every_s=0.5)
                except ToolError:
                    applied = revoked_at()
                out["cpu_revoking"] = busy.stop()
                lat = [t - committed[p] for per in applied.values() for p, t in per.items() if t is not None]
                first, last = [], []
                for p in revoked:
                    ts = [t for per in applied.values() if (t := per[p]) is not None]
                    if ts:
                        first.append(min(ts) - committed[p])
                        last.append(max(ts) - committed[p])
                missing = sum(1 for per in applied.values() for t in per.values() if t is None)
                still = w.merged("present", revoked)
                out.update(
                    revocations=len(revoked),
                    revocations_by=how,
                    gap_s=args.gap,
                    latency_s=_dist(lat),
                    first_door_s=_dist(first),
                    last_door_s=_dist(last),
                    pairs=len(lat),
                    not_applied_pairs=missing,
                    still_matchable_pairs=sum(len(v or []) for v in still.values()),
                    timing="hub commit (time before Gallery.set_enabled/remove) -> door applied_at (matrix patched)",
                )
            finally:
                out["door_errors"] = w.stop()
        finally:
            hub.stop()
    out["revocation_p99_s"] = out["latency_s"]["p99"]
    return out


def _changes(
    g: Gallery, people: list[int], n: int, revocations: int, rng: random.Random
) -> tuple[list[int], dict[str, int]]:
    """``n`` hub changes: ``revocations`` of them disable or remove someone of ``people``, the rest enrol new people
    (55 %) or add a template to someone not revoked; shuffled. Returns the revoked ids and the mix."""
    revoked = rng.sample(people, revocations)
    keep = sorted(set(people) - set(revoked))
    plan = [("revoke", p) for p in revoked]
    rest = n - revocations
    enrol = rest * 55 // 90
    plan += [("enrol", 10_000_000 + i) for i in range(enrol)]
    plan += [("template", rng.choice(keep)) for _ in range(rest - enrol)]
    rng.shuffle(plan)
    mix = {"disabled": 0, "removed": 0, "enrolled": 0, "templates_added": 0}
    for kind, x in plan:
        if kind == "revoke":
            if mix["disabled"] <= mix["removed"]:
                g.set_enabled(x, False)
                mix["disabled"] += 1
            else:
                g.remove(x)
                mix["removed"] += 1
        elif kind == "enrol":
            g.enroll(f"new-{x}", [template(x)])
            mix["enrolled"] += 1
        else:
            g.add_templates(x, [template(rng.randrange(1 << 30))])
            mix["templates_added"] += 1
    return revoked, mix


def catch_up(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    doors = door_ids(max(2, args.doors or 2))
    cut = doors[0]
    out: dict[str, Any] = {"doors": len(doors), "partitioned": [cut], "people": args.people, "changes": args.changes}
    with running_site(root, doors) as (site, server):
        with site.hub_gallery() as g:
            people = bulk_enroll(g, 0, args.people)
        hub = HubProcess(site, server.url)
        w = Workers(site, server.url, doors, 1, proxied=[cut])
        try:
            t0 = time.time()
            w.wait_ready(args.people, t0, 600)
            t_cut = w.call("partition", doors=[cut])[0]
            time.sleep(1.0)
            with site.hub_gallery() as g:
                t0 = time.time()
                revoked, mix = _changes(g, people, args.changes, args.changes // 10, random.Random(18))
                out["changes_made_s"] = round(time.time() - t0, 2)
            out["mix"] = mix
            wait_for(lambda: hub_published(site), 300, "the hub to publish the changes")
            want = hub_digest(site)
            w.call("watch", (cut, revoked, want), doors=[cut])
            time.sleep(0.2)
            t_heal = w.call("heal", doors=[cut])[0]
            wait_for(lambda: w.call("watch_result", cut, doors=[cut])[0]["consistent_at"], 120, "the door to catch up")
            time.sleep(0.5)
            res = w.call("watch_result", cut, doors=[cut])[0]
            status = w.merged("status", doors=doors)
            out.update(
                partitioned_for_s=round(t_heal - t_cut, 2),
                catch_up_s=round(res["consistent_at"] - t_heal, 3),
                catch_up_apply_s=round(res["consistent_apply_at"] - t_heal, 3),
                reconnected_s=None if res["reconnected_at"] is None else round(res["reconnected_at"] - t_heal, 3),
                revoked_matchable_until_s=(
                    None if res["last_revoked_seen"] is None else round(res["last_revoked_seen"] - t_heal, 3)
                ),
                revoked_matchable_after_catch_up=(
                    res["last_revoked_seen"] is not None and res["last_revoked_seen"] > res["consistent_apply_at"]
                ),
                samples=res["samples"],
                matrix_min_size=res["min_size"],
                control_door_consistent=status[doors[1]]["digest"] == want,
                timing="heal -> first ~25 ms poll finding the replica digest equal to the hub's (catch_up_s); "
                "heal -> the door's apply that made it so (catch_up_apply_s); heal -> the door's client connected "
                "again (reconnected_s); heal -> the last ~2 ms sample with a revoked person in the matrix",
            )
            out["door_errors"] = w.stop()
        finally:
            hub.stop()
    return out


def events(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    doors = door_ids(args.doors or 50)
    cut = doors[-min(args.partitioned, len(doors)) :] if args.partitioned else []
    secs = args.minutes * 60.0
    out: dict[str, Any] = {"doors": len(doors), "rate_per_door": args.rate, "minutes": args.minutes, "partitioned": cut}
    with running_site(root, doors) as (site, server):
        with site.hub_gallery() as g:
            bulk_enroll(g, 0, 20)
        hub = HubProcess(site, server.url)
        w = Workers(site, server.url, doors, args.workers, proxied=cut)
        try:
            w.wait_ready(20, time.time(), 600)
            if cut:
                w.call("partition", doors=cut)
            t0 = time.time()
            w.call("produce", args.rate)
            faults = []
            for at, what in ((0.3, "nats-server"), (0.6, "hub")):
                time.sleep(max(0.0, t0 + at * secs - time.time()))
                t = time.time()
                if what == "hub":
                    hub.kill()
                    hub.start()
                else:
                    server.kill()
                    server.start()
                faults.append({"what": f"SIGKILL {what}, restarted", "at_s": round(t - t0, 1)})
            time.sleep(max(0.0, t0 + secs - time.time()))
            stopped = w.call("stop_producing")
            t_end = time.time()
            produced = int(sum(n for part in stopped for n in part["produced"].values()))
            out["faults"] = faults
            out["produce_late_ticks"] = sum(p["late"] for p in stopped)
            out["achieved_rate_per_s"] = round(produced / (t_end - t0), 1)
            t_heal = w.call("heal", doors=cut)[0] if cut else t_end

            def drained() -> bool:
                with site.hub_gallery() as g:
                    n = int(g._rows("SELECT count(*) AS n FROM fleet_events")[0]["n"])
                return n >= produced

            try:
                wait_for(drained, 600, "the hub to hold every event", every_s=0.25)
                out["drain_after_heal_s"] = round(time.time() - t_heal, 2)
            except ToolError as err:
                out["drain_after_heal_s"] = None
                out["drain_error"] = str(err)
            time.sleep(1.0)
            out["door_errors"] = w.stop()
        finally:
            hub.stop()
        out.update(compare_events(site, doors))
    return out


def compare_events(site: SimSite, doors: list[str]) -> dict[str, Any]:
    """Every door's own rows against the hub's: lost, duplicated (not produced, or a different row), chains."""
    produced: dict[tuple[str, int], dict[str, Any]] = {}
    for door in doors:
        with Gallery(site.door_db(door)) as g:
            for row in g.raw_events_after(0, 10**9):
                produced[(door, int(row["id"]))] = {"door": door, **row}
    with site.hub_gallery() as g:
        stored = {(str(r["door"]), int(r["seq"])): json.loads(r["raw"]) for r in g._rows("SELECT * FROM fleet_events")}
        chains = hubdb.chain_report(g)
    lost = set(produced) - set(stored)
    extra = set(stored) - set(produced)
    differ = {k for k in set(stored) & set(produced) if stored[k] != produced[k]}
    heads = {d: max((i for dd, i in produced if dd == d), default=0) for d in doors}
    intact = all(
        chains.get(d, {"head": 0, "broken_at": None})["broken_at"] is None
        and chains.get(d, {"head": 0})["head"] == heads[d]
        for d in doors
    )
    return {
        "events_produced": len(produced),
        "events_at_hub": len(stored),
        "events_lost": len(lost),
        "events_duplicated": len(extra) + len(differ),
        "events_differing": len(differ),
        "chains_intact": intact,
        "chain_breaks": sum(1 for c in chains.values() if c["broken_at"] is not None),
    }


def resync(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    doors = ["d000"]
    n = args.resync_people
    out: dict[str, Any] = {"people": n, "dim": DIM}
    with running_site(root, doors) as (site, server):
        t0 = time.time()
        with site.hub_gallery() as g:
            for first in range(0, n, 10_000):
                bulk_enroll(g, first, min(10_000, n - first))
        out["hub_gallery_build_s"] = round(time.time() - t0, 1)
        hub = HubProcess(site, server.url)
        try:
            t0 = time.time()
            wait_for(lambda: hub_published(site), 1800, "the hub to publish the gallery", every_s=1.0)
            out["hub_publish_s"] = round(time.time() - t0, 1)
            t0 = time.time()
            w = Workers(site, server.url, doors, 1)
            try:
                out["initial_sync_s"] = round(w.wait_ready(n, t0, 1800) - t0, 1)
                w.call("watch", ("d000", [], None))
                time.sleep(0.5)
                t_start = w.call("resync", "d000")[0]
                wait_for(lambda: w.call("watch_result", "d000")[0]["resync_done_at"], 1800, "the resync", every_s=0.5)
                time.sleep(0.5)
                res = w.call("watch_result", "d000")[0]
                status = w.merged("status", doors=doors)["d000"]
                out["consistent_after"] = status["digest"] == hub_digest(site)
                status_s = w.call("time_status", ("d000", 5))[0]
                committed: dict[int, float] = {}
                with site.hub_gallery() as g:
                    for pid in range(1, 6):  # revocations at a door this size: the digest of 100k records each
                        committed[pid] = time.time()
                        g.set_enabled(pid, False)
                        time.sleep(2.0)
                applied = wait_for(
                    lambda: (a := w.merged("applied", list(committed))["d000"]) and all(a.values()) and a,
                    120,
                    "the revocations at the big door",
                )
                out["revocation_latency_s"] = _dist([applied[p] - t for p, t in committed.items()])
                out.update(
                    status_ms=round(status_s * 1000, 1),
                    resync_s=round(res["resync_done_at"] - t_start, 2),
                    matrix_min_size=res["min_size"],
                    matrix_max_size=res["max_size"],
                    samples=res["samples"],
                    never_empty=bool(res["min_size"]) and res["min_size"] >= n,
                )
            finally:
                out["door_errors"] = w.stop()
        finally:
            hub.stop()
    return out


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "revocation": revocation,
    "catch-up": catch_up,
    "events": events,
    "resync": resync,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools fleet-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    p.add_argument("--doors", type=int, default=None, help="doors (default per scenario: 200, 2, 50, 1)")
    p.add_argument("--people", type=int, default=1000, help="people at the hub (revocation, catch-up)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the events run")
    p.add_argument("--workers", type=int, default=2, help="door worker processes")
    p.add_argument(
        "--sync-sample", type=int, default=0, help="doors synced through NATS, one copied to the rest (0: all)"
    )
    p.add_argument("--revocations", type=int, default=50)
    p.add_argument("--gap", type=float, default=2.0, help="seconds between revocations")
    p.add_argument("--changes", type=int, default=1000, help="hub changes while a door is cut off (catch-up)")
    p.add_argument("--rate", type=float, default=5.0, help="events a second per door")
    p.add_argument("--partitioned", type=int, default=10, help="doors cut off through the events run")
    p.add_argument("--resync-people", type=int, default=100_000)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--tmp", type=Path, default=None, help="where the site lives (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result: dict[str, Any] = dict.fromkeys(TOP_KEYS)
    from tools.measure.replay_bench import git_state  # cv2 and the door loop: only when measuring

    result["machine"] = describe()
    result["git"] = git_state()
    result["command"] = "python -m tools fleet-sim " + " ".join(argv)
    chosen = SCENARIOS if args.scenario == "all" else (args.scenario,)
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"fleet-sim-{name}-", dir=args.tmp) as tmp:
            t0 = time.time()
            figures = RUNNERS[name](args, Path(tmp))
            figures["wall_s"] = round(time.time() - t0, 1)
        result[name] = figures
        for key in TOP_KEYS:
            if key in figures:
                result[key] = figures[key]
        print(f"{name}: {json.dumps(figures, sort_keys=True)}", flush=True)
    result["machine"]["loadavg_end"] = loadavg()
    print(json.dumps({k: result[k] for k in TOP_KEYS}, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
