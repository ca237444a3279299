"""The hub's gallery records: each person (or the site's access rules) read from the hub's database as one record,
exactly as a door stores it. Templates stay encrypted under the site key as the hub stores them."""

from __future__ import annotations

import base64
from typing import Any

from kiosk.errors import TemplateKeyError
from kiosk.fleet.protocol import ACCESS_KEY
from kiosk.gallery import Gallery

_PERSON = "SELECT id, name, created, enabled, valid_from, valid_until, note, credential FROM people WHERE id = ?"
_TEMPLATES = """SELECT id, embedding, dim, model_id, model_sha256, quality, source, created, key_id FROM templates
    WHERE person_id = ? ORDER BY id"""
_GROUPS = """SELECT g.id, g.name FROM person_groups pg JOIN groups g ON g.id = pg.group_id WHERE pg.person_id = ?
    ORDER BY g.id"""


def person_record(gallery: Gallery, person_id: int, site_key_id: str) -> dict[str, Any]:
    """The person as a record, or a tombstone ``{"id", "deleted": true}`` once they are gone."""
    rows = gallery._rows(_PERSON, [person_id])
    if not rows:
        return {"id": person_id, "deleted": True}
    person = dict(rows[0])
    templates = []
    for t in gallery._rows(_TEMPLATES, [person_id]):
        if t["key_id"] != site_key_id:
            raise TemplateKeyError(
                f"template {t['id']} of person {person_id} is not encrypted with the site key "
                f"({t['key_id'] or 'plaintext'}); run `kiosk rekey` on the hub before serving doors"
            )
        templates.append({**t, "embedding": base64.b64encode(t["embedding"]).decode()})
    person["templates"] = templates
    person["groups"] = [[int(g["id"]), str(g["name"])] for g in gallery._rows(_GROUPS, [person_id])]
    return person


def access_record(gallery: Gallery) -> dict[str, Any]:
    """The site's groups, schedules and access rules, whole."""
    return {
        "key": ACCESS_KEY,
        "groups": gallery._rows("SELECT id, name FROM groups ORDER BY id"),
        "schedules": gallery._rows("SELECT id, name, tz, windows FROM schedules ORDER BY id"),
        "rules": gallery._rows("SELECT id, name, group_id, doors, schedule_id FROM access_rules ORDER BY id"),
    }
