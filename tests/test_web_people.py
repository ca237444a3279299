"""People and enrolment through the API (kiosk.web.people under kiosk.web.api): a verdict per photo before anything
is saved, all-or-nothing storage, audited changes, removal with the erasure guarantees. Real gallery, real models,
real photos."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from fastapi.testclient import TestClient

from kiosk.gallery.open import open_gallery
from kiosk.web import people
from kiosk.web.services import WebServices
from tests.webapi_support import blurred, bomb, corrupt, enrol, lfw, no_face, powell, two_faces, upload

pytest_plugins = ("tests.webapi_fixtures",)  # the services, admin and viewer fixtures


def _people(services: WebServices) -> list[str]:
    with open_gallery(services.cfg) as g:
        return [p.name for p in g.list_people()]


def _people_ids(services: WebServices) -> dict[str, int]:
    with open_gallery(services.cfg) as g:
        return {p.name: p.id for p in g.list_people()}


def _last_admin_event(services: WebServices) -> dict[str, Any]:
    with open_gallery(services.cfg) as g:
        return [e for e in g.events() if e["kind"] == "admin"][-1]


def _verdicts(r: Any) -> dict[str, dict[str, Any]]:
    return {v["filename"]: v for v in r.json()["verdicts"]}


def test_enrol_from_good_photos_is_audited_with_the_account(admin: TestClient, services: WebServices) -> None:
    r = enrol(admin, "Colin Powell", *powell(1, 2, 3))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["person"]["name"] == "Colin Powell" and body["person"]["templates"] == 3
    assert [v["code"] for v in body["verdicts"]] == ["ok", "ok", "ok"]
    assert all(v["measured"]["sharpness"] > 0 for v in body["verdicts"])
    event = _last_admin_event(services)
    assert (event["outcome"], event["person_name"]) == ("enrolled", "Colin Powell")
    assert event["detail"] == {"by": "web:ada from testclient", "templates": 3}
    detail = admin.get(f"/api/people/{body['person']['id']}").json()
    assert sorted(t["source"] for t in detail["templates"]) == ["powell1.jpg", "powell2.jpg", "powell3.jpg"]
    assert all(
        set(t) == {"id", "quality", "created", "source", "model_id", "model_sha256"} for t in detail["templates"]
    )


def test_bad_photos_get_their_verdicts_and_nothing_is_stored(admin: TestClient, services: WebServices) -> None:
    photos = [
        ("good.jpg", lfw("Tony_Blair", 4)),
        ("nobody.png", no_face()),
        ("blurred.jpg", blurred()),
        ("half.jpg", corrupt()),
        ("bomb.png", bomb()),
        ("notes.jpg", b"just some text, renamed .jpg\n"),
        ("../../etc/passwd.jpg", b"root:x:0:0:root:/root:/bin/bash\n"),
        ("group.jpg", two_faces()),
    ]
    r = enrol(admin, "Tony Blair", *photos)
    assert r.status_code == 422 and "nothing enrolled: 7 of 8 photo(s) rejected" in r.json()["detail"]
    v = _verdicts(r)
    assert v["good.jpg"]["code"] == "ok"
    assert v["nobody.png"]["code"] == "no-face" and v["nobody.png"]["message"] == "no face found"
    assert v["blurred.jpg"]["code"] == "quality"
    assert v["blurred.jpg"]["message"].startswith("failed quality: too blurry: sharpness ")
    assert v["blurred.jpg"]["measured"]["sharpness"] < services.cfg.quality.min_sharpness
    assert v["half.jpg"]["code"] == "unreadable" and "truncated" in v["half.jpg"]["message"]
    assert v["bomb.png"]["code"] == "too-large" and "10000x6000" in v["bomb.png"]["message"]
    assert v["notes.jpg"]["code"] == "unreadable" and "not a readable image" in v["notes.jpg"]["message"]
    # A client's file name is a label, never a path: only its last part is shown and nothing is written anywhere.
    assert v["passwd.jpg"]["code"] == "unreadable" and v["passwd.jpg"]["index"] == 6
    assert v["group.jpg"]["code"] == "several-faces" and len(v["group.jpg"]["faces"]) == 2
    assert _people(services) == []
    assert not [p for p in services.cfg.data_dir.rglob("*") if p.suffix in (".jpg", ".png")]


def test_several_faces_boxes_are_left_to_right_and_a_pick_enrols_that_face(
    admin: TestClient, services: WebServices
) -> None:
    r = enrol(admin, "Tony Blair", ("group.jpg", two_faces()), ("blair.jpg", lfw("Tony_Blair", 4)))
    assert r.status_code == 422
    boxes = _verdicts(r)["group.jpg"]["faces"]
    assert boxes[0][0] < 0.5 < boxes[1][0]  # Powell on the left, Blair on the right
    assert all(0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1 for x, y, w, h in boxes)
    # Picking the left face (Powell) among Blair photos: the batch is inconsistent.
    r = enrol(admin, "Tony Blair", ("group.jpg", two_faces()), ("blair.jpg", lfw("Tony_Blair", 4)), faces='{"0": 0}')
    assert r.status_code == 422 and {v["code"] for v in r.json()["verdicts"]} == {"inconsistent"}
    r = enrol(admin, "Tony Blair", ("group.jpg", two_faces()), ("blair.jpg", lfw("Tony_Blair", 4)), faces='{"0": 1}')
    assert r.status_code == 201, r.text
    assert r.json()["person"]["templates"] == 2
    r = enrol(admin, "Someone", ("group.jpg", two_faces()), faces='{"0": 5}')
    assert r.status_code == 422 and "face 5 is not one of them (0..1)" in r.json()["verdicts"][0]["message"]
    for bad in ("[1, 2]", "{nope", '{"a": "b"}'):
        r = enrol(admin, "Someone", ("group.jpg", two_faces()), faces=bad)
        assert r.status_code == 422 and "faces: expected JSON" in r.json()["detail"]


def test_a_face_already_enrolled_as_someone_else_looks_like_them(admin: TestClient, services: WebServices) -> None:
    first = enrol(admin, "Colin Powell", *powell(1, 2, 3)).json()["person"]
    r = enrol(admin, "Not Powell", *powell(4))
    assert r.status_code == 422
    verdict = r.json()["verdicts"][0]
    assert verdict["code"] == "looks-like" and verdict["message"].startswith("looks like Colin Powell (0.")
    assert verdict["looks_like"]["person_id"] == first["id"] and verdict["looks_like"]["name"] == "Colin Powell"
    assert _people(services) == ["Colin Powell"]
    # The person's own photos are no look-alikes when appending to them.
    r = enrol(admin, "Colin Powell", *powell(4), append="true")
    assert r.status_code == 201 and r.json()["person"]["templates"] == 4


def test_partial_stores_the_photos_that_passed(admin: TestClient, services: WebServices) -> None:
    r = enrol(admin, "Colin Powell", *powell(1, 2), ("nobody.png", no_face()), partial="true")
    assert r.status_code == 201
    assert r.json()["person"]["templates"] == 2 and r.json()["verdicts"][2]["code"] == "no-face"


def test_upload_judged_by_content_not_by_declared_type(admin: TestClient, services: WebServices) -> None:
    files = upload(*powell(1), content_type="text/plain") + upload(("x.jpg", b"GIF89a....."), content_type="image/jpeg")
    r = admin.post("/api/people", data={"name": "Colin Powell"}, files=files)
    assert r.status_code == 422
    assert [v["code"] for v in r.json()["verdicts"]] == ["ok", "unreadable"]
    # No multipart at all: a clean 422 from the request's validation.
    r = admin.post("/api/people", json={"name": "x", "photos": []})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"


def test_names_and_limits_are_checked_before_any_photo(admin: TestClient, services: WebServices) -> None:
    enrol(admin, "Colin Powell", *powell(1, 2))
    r = enrol(admin, "colin powell", *powell(3))
    assert r.status_code == 409 and "already enrolled" in r.json()["detail"]
    r = enrol(admin, "Nobody", *powell(3), append="true")
    assert r.status_code == 404 and "no one to add the photos to" in r.json()["detail"]
    pid = _people_ids(services)["Colin Powell"]
    r = enrol(admin, str(pid), ("b4.jpg", lfw("Tony_Blair", 4)))  # a digits-only name is a name, not an id
    assert r.status_code == 201 and r.json()["person"]["name"] == str(pid)
    r = enrol(admin, "bad\u202ename", *powell(3))
    assert r.status_code == 422 and "text-direction" in r.json()["detail"]
    r = enrol(admin, "Too Many", *powell(*range(1, 10)))  # upload_max_files is 8
    assert r.status_code == 422 and "limit is 8" in r.json()["detail"]
    r = admin.post("/api/people", data={"name": "No Photos"})
    assert r.status_code == 422
    assert sorted(_people(services)) == sorted(["Colin Powell", str(pid)])


def test_oversized_file_is_too_large(admin: TestClient, services: WebServices) -> None:
    big = lfw("Tony_Blair", 4) + b"\0" * int(services.cfg.web.upload_max_mb * 1e6)
    r = enrol(admin, "Tony Blair", ("big.jpg", big))
    assert r.status_code == 422 and r.json()["verdicts"][0]["code"] == "too-large"


def test_heic_without_pillow_heif_is_an_unsupported_format(admin: TestClient) -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    r = enrol(admin, "Someone", ("IMG_0001.HEIC", heic))
    verdict = r.json()["verdicts"][0]
    assert verdict["code"] == "unreadable" and verdict["message"].startswith("unsupported format: HEIC")


def test_bmp_is_refused_on_the_web(admin: TestClient) -> None:
    import cv2
    import numpy as np

    _, buf = cv2.imencode(".bmp", np.zeros((32, 32, 3), np.uint8))
    r = enrol(admin, "Someone", ("x.bmp", buf.tobytes()))
    assert r.json()["verdicts"][0]["message"] == "unsupported format (BMP): upload JPEG, PNG or WebP photos"


def test_list_search_and_detail(admin: TestClient, viewer: TestClient, services: WebServices) -> None:
    enrol(admin, "Colin Powell", *powell(1, 2))
    enrol(admin, "Tony Blair", ("b1.jpg", lfw("Tony_Blair", 4)), ("b2.jpg", lfw("Tony_Blair", 5)))
    assert [p["name"] for p in viewer.get("/api/people").json()] == ["Colin Powell", "Tony Blair"]
    assert [p["name"] for p in viewer.get("/api/people", params={"q": "BLAIR"}).json()] == ["Tony Blair"]
    assert viewer.get("/api/people/999").status_code == 404
    assert viewer.get(f"/api/people/{2**70}").status_code == 404


def test_patch_rename_disable_window_each_audited(admin: TestClient, services: WebServices) -> None:
    pid = enrol(admin, "Colin Powell", *powell(1, 2)).json()["person"]["id"]
    r = admin.patch(f"/api/people/{pid}", json={"name": "General Powell", "enabled": False})
    assert r.status_code == 200 and r.json()["name"] == "General Powell" and r.json()["enabled"] is False
    assert _last_admin_event(services)["outcome"] == "disabled"
    r = admin.patch(f"/api/people/{pid}", json={"valid_from": "2026-01-01T00:00:00Z", "valid_until": None})
    assert r.json()["valid_from"] == "2026-01-01T00:00:00+00:00" and r.json()["valid_until"] is None
    event = _last_admin_event(services)
    assert event["outcome"] == "validity set" and event["detail"]["by"] == "web:ada from testclient"
    bad = admin.patch(f"/api/people/{pid}", json={"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-01-01"})
    assert bad.status_code == 422 and "must be after" in bad.json()["detail"]
    assert admin.patch(f"/api/people/{pid}", json={"nick": "x"}).status_code == 422
    assert admin.patch(f"/api/people/{pid}", json={"name": "  "}).status_code == 422
    assert admin.patch("/api/people/999", json={"enabled": True}).status_code == 404
    enrol(admin, "Tony Blair", ("b1.jpg", lfw("Tony_Blair", 4)))
    assert admin.patch(f"/api/people/{pid}", json={"name": "tony blair"}).status_code == 409


def test_delete_one_template(admin: TestClient, services: WebServices) -> None:
    pid = enrol(admin, "Colin Powell", *powell(1, 2)).json()["person"]["id"]
    other = enrol(admin, "Tony Blair", ("b1.jpg", lfw("Tony_Blair", 4))).json()["person"]["id"]
    blairs = admin.get(f"/api/people/{other}").json()["templates"][0]["id"]
    assert admin.delete(f"/api/people/{pid}/templates/{blairs}").status_code == 404  # not Powell's
    tid = admin.get(f"/api/people/{pid}").json()["templates"][0]["id"]
    r = admin.delete(f"/api/people/{pid}/templates/{tid}")
    assert r.status_code == 200 and r.json()["templates"] == 1
    event = _last_admin_event(services)
    assert event["outcome"] == "template deleted" and event["detail"]["template"] == tid
    assert event["detail"]["by"] == "web:ada from testclient"


def test_remove_erases_from_gallery_and_backups(admin: TestClient, services: WebServices) -> None:
    pid = enrol(admin, "Colin Powell", *powell(1, 2)).json()["person"]["id"]
    backup = admin.post("/api/backups")
    assert backup.status_code == 201
    r = admin.delete(f"/api/people/{pid}")
    assert r.status_code == 200
    assert r.json() | {"person_id": 0} == {
        "person_id": 0,
        "name": "Colin Powell",
        "templates": 2,
        "backups": 1,
        "erased_from": 1,
        "failed": [],
    }
    path = services.cfg.backup_dir / backup.json()["name"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM templates").fetchone()[0] == 0
    assert _people(services) == [] and admin.get(f"/api/people/{pid}").status_code == 404
    assert admin.delete(f"/api/people/{pid}").status_code == 404


def test_remove_reports_a_backup_it_could_not_erase(admin: TestClient, services: WebServices) -> None:
    pid = enrol(admin, "Colin Powell", *powell(1, 2)).json()["person"]["id"]
    services.cfg.backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (services.cfg.backup_dir / "other.db").write_bytes(b"not a database at all" * 100)
    r = admin.delete(f"/api/people/{pid}")
    assert r.status_code == 200 and r.json()["failed"][0].startswith("other.db: ")
    assert _people(services) == []


def test_assess_photos_saves_nothing(services: WebServices) -> None:
    verdicts = people.assess_photos(services, [("a.jpg", lfw("Colin_Powell", 1)), ("b.png", no_face())])
    assert [(v.index, v.code) for v in verdicts] == [(0, "ok"), (1, "no-face")]
    assert json.loads(json.dumps([v.as_dict() for v in verdicts]))[0]["ok"] is True
    assert _people(services) == []
