"""``kiosk hub serve | add-door | remove-door`` and ``kiosk fleet status | unlock | resync``: many doors, one site.

The hub runs on the site's server with the site gallery (``gallery.encrypt: true``); each door runs ``kiosk run``
with a ``fleet:`` section naming the broker and the credentials file ``kiosk hub add-door`` wrote for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from kiosk.cli._output import emit_json, table
from kiosk.config import Config
from kiosk.errors import ConfigError, KioskError


def register(sub: Any) -> None:
    p = sub.add_parser("hub", help="run the site hub and manage its doors", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    v = verbs.add_parser("serve", help="run the hub (and its broker) until stopped", description=cmd_serve.__doc__)
    v.set_defaults(func=cmd_serve)
    v = verbs.add_parser("add-door", help="register a door and write its credentials", description=cmd_add.__doc__)
    v.add_argument("door", help="door id: 1-63 of a-z, 0-9 and '-'")
    v.add_argument("--out", type=Path, help="where to write the door's credentials (default ./DOOR.door.json)")
    v.set_defaults(func=cmd_add)
    v = verbs.add_parser("remove-door", help="revoke a door's credentials", description=cmd_remove.__doc__)
    v.add_argument("door")
    v.set_defaults(func=cmd_remove)

    p = sub.add_parser("fleet", help="the site's doors: state, remote unlock, resync", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    v = verbs.add_parser("run", help="a door's fleet agent, beside `kiosk run`", description=cmd_run.__doc__)
    v.set_defaults(func=cmd_run)
    v = verbs.add_parser("status", help="every door: online, revision, lag, outbox", description=cmd_status.__doc__)
    v.add_argument("--json", action="store_true", help="one JSON document")
    v.set_defaults(func=cmd_status)
    for verb, doc in (("unlock", cmd_unlock.__doc__), ("resync", cmd_resync.__doc__), ("ping", cmd_ping.__doc__)):
        v = verbs.add_parser(verb, help=(doc or "").split("\n")[0].rstrip("."), description=doc)
        v.add_argument("door")
        if verb == "unlock":
            v.add_argument("--reason", default="remote unlock", help="recorded in the door's event")
        v.set_defaults(func={"unlock": cmd_unlock, "resync": cmd_resync, "ping": cmd_ping}[verb])


def _hub_gallery(cfg: Config) -> Any:
    from kiosk.gallery.open import open_gallery

    return open_gallery(cfg, check=False, need_key=False)


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    """Run the hub until SIGTERM: the site gallery goes to every door, their events come back, their state is kept.
    With ``hub.broker: embedded`` the hub starts nats-server (from the fleet extra) on ``hub.server`` itself."""
    from kiosk.fleet.service import serve_hub, site_key
    from kiosk.gallery.open import open_gallery

    site_key(cfg)  # refuse early, with the fix, when the gallery is not encrypted
    serve_hub(cfg, lambda: open_gallery(cfg, check=False))
    return 0


def cmd_add(args: argparse.Namespace, cfg: Config) -> int:
    """Register DOOR: a broker password and a door key of its own, written to a credentials file (0600) for the
    installer to copy to the door as ``fleet.credentials_file``. A running hub picks the door up within seconds."""
    from kiosk.fleet import hubdb
    from kiosk.fleet.broker import check_door_id
    from kiosk.fleet.secrets import write_bundle
    from kiosk.fleet.service import door_ca, hub_secrets

    door = check_door_id(args.door)
    out = args.out or Path(f"{door}.door.json")
    if out.exists():
        raise ConfigError(f"{out} already exists: refusing to overwrite a door's credentials")
    secret = hub_secrets(cfg).add_door(door)
    write_bundle(out, dataclasses.replace(secret, ca_pem=door_ca(cfg)))  # TLS: the door pins the hub's certificate
    with _hub_gallery(cfg) as g:
        hubdb.install(g)
        hubdb.add_door(g, door)
    print(f"door {door} registered; its credentials are in {out} (keep them secret).")
    print(f"On the door: copy {out} there (mode 0600) and set fleet.enabled: true, fleet.credentials_file, "
          "fleet.server.")  # fmt: skip
    return 0


def cmd_remove(args: argparse.Namespace, cfg: Config) -> int:
    """Revoke DOOR's credentials: a running hub drops its broker user within seconds. Its events stay."""
    from kiosk.fleet import hubdb
    from kiosk.fleet.service import hub_secrets

    removed = hub_secrets(cfg).remove_door(args.door)
    with _hub_gallery(cfg) as g:
        hubdb.install(g)
        removed = hubdb.remove_door(g, args.door) or removed
    if not removed:
        raise KioskError(f"no door {args.door!r} at this hub; see `kiosk fleet status`")
    print(f"door {args.door} removed")
    return 0


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    """On a door of a site: its fleet agent until SIGTERM, a process beside `kiosk run` (systemd kiosk-fleet.service)
    so the door loop keeps its sandbox without a network. It keeps the door's gallery a replica of the hub's, sends
    the door's events to the hub, beats, and carries out the hub's live commands through the loop's control socket."""
    from kiosk.fleet.service import run_door_agent

    run_door_agent(cfg)
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    """Every door as the hub last heard it: online, the gallery revision it applied and its lag, whether its digest
    matches the hub's, its outbox depth, newest event and how far the hub holds its events, chain, staleness."""
    from kiosk.fleet import hubdb
    from kiosk.fleet.service import status

    with _hub_gallery(cfg) as g:
        rows = status(cfg, g)
        conflict = hubdb.meta(g, "split_brain") or None
    if conflict:
        print(f"kiosk: warning: the hub stopped publishing: {conflict}", file=sys.stderr)
    if args.json:
        emit_json({"doors": rows, "hub": {"publishing_stopped": conflict}})
        return 0
    if not rows:
        print("no doors yet: `kiosk hub add-door ID`")
        return 0
    header = ["door", "online", "rev", "lag", "in sync", "outbox", "last event", "at hub", "chain", "stale s"]
    body = [
        [r["door"], "yes" if r["online"] else "no", _s(r["rev"]), _s(r["lag"]), _s(r["in_sync"]),
         _s(r["outbox_depth"]), _s(r["last_event"]), _s(r["events_at_hub"]), r["chain"], _s(r["stale_s"])]
        for r in rows
    ]  # fmt: skip
    print(table(body, header))
    return 0


def _s(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def cmd_unlock(args: argparse.Namespace, cfg: Config) -> int:
    """Unlock DOOR once, now (live only: a door that does not answer is not unlocked later). The door records who."""
    from kiosk.authz import actor
    from kiosk.fleet.service import send_command

    reply = send_command(cfg, args.door, "unlock", actor=actor(), reason=args.reason)
    print(f"door {args.door} unlocked for {reply.get('pulse_s', '?')} s")
    return 0


def cmd_resync(args: argparse.Namespace, cfg: Config) -> int:
    """Make DOOR reload the whole site gallery (staged: it keeps its current one until the new one is complete)."""
    from kiosk.fleet.service import send_command

    send_command(cfg, args.door, "resync")
    print(f"door {args.door} is resynchronising")
    return 0


def cmd_ping(args: argparse.Namespace, cfg: Config) -> int:
    """Ask DOOR for its state, live."""
    from kiosk.fleet.service import send_command

    emit_json(send_command(cfg, args.door, "ping"))
    return 0
