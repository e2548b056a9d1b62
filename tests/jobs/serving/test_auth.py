"""Who may call the service: API keys (hashed, several, revocable, reloaded), 401s that log nothing,
request bodies validated with 422s naming the field."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.cli import main
from jobs.serving.auth import KeyRing, add_key, hash_key, read_key_file, revoke_key
from jobs.serving.log import model_wal_dir, read_wal

from .conftest import DAY, MODEL
from .test_metrics import samples, value
from .test_service import _app

BODY = {"entity_id": 5, "request_time": f"{DAY}T12:00:00Z"}


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_keys_are_required_revocable_and_never_written(lake_cfg, model_source, tmp_path):
    key_file = tmp_path / "keys" / "serving_keys"
    id_a, key_a = add_key(key_file, "team-a")
    id_b, key_b = add_key(key_file, "team-b")
    text = key_file.read_text()
    assert key_a not in text and key_b not in text and hash_key(key_a) in text and hash_key(key_b) in text
    assert key_file.stat().st_mode & 0o777 == 0o600
    app = _app(lake_cfg, model_source, tmp_path, api_keys_file=str(key_file), api_keys_reload_s=0.0)
    with TestClient(app) as c:
        health = c.get("/health")  # open: no key needed
        none = c.post("/predict", json=BODY)
        wrong = c.post("/predict", json=BODY, headers={"X-API-Key": key_a[:-1] + ("x" if key_a[-1] != "x" else "y")})
        not_bearer = c.post("/predict", json=BODY, headers={"Authorization": f"Basic {key_a}"})
        bad_json_no_key = c.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        ok_a = c.post("/predict", json=BODY, headers={"Authorization": f"Bearer {key_a}"})
        ok_b = c.post("/predict", json=BODY, headers={"X-API-Key": key_b})
        assert revoke_key(key_file, id_a) and not revoke_key(key_file, id_a)
        revoked = c.post("/predict", json=BODY, headers={"X-API-Key": key_a})
        still_b = c.post("/predict", json=BODY, headers={"X-API-Key": key_b})
        batch_no_key = c.post("/predict/batch", json={"queries": [BODY]})
        got = samples(c.get("/metrics").text)
    assert health.status_code == 200 and health.json()["auth"] == "api_key"
    for r in (none, wrong, not_bearer, bad_json_no_key, revoked, batch_no_key):
        assert r.status_code == 401 and r.json() == {"detail": "missing or invalid API key"}
        assert r.headers["www-authenticate"] == "Bearer"
    assert ok_a.status_code == ok_b.status_code == still_b.status_code == 200
    logged = read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL)
    assert sorted(logged.request_id) == sorted(r.json()["request_id"] for r in (ok_a, ok_b, still_b))
    assert value(got, "lockstep_serving_unauthorized_total", model=MODEL.name) == 6
    assert value(got, "lockstep_serving_requests_total", endpoint="/predict", status=200) == 3
    for key in (key_a, key_b):
        for root in (tmp_path / "wal", Path(lake_cfg.lake_root)):
            assert files_containing(root, key.encode()) == []
    assert [e.key_id for e in read_key_file(key_file)] == [id_b]


def test_keys_from_the_environment_and_a_vanished_file_accepts_nothing(tmp_path):
    _, key = add_key(tmp_path / "k", "file-key")
    env_key = "lsk_from-the-orchestrator"
    ring = KeyRing(tmp_path / "k", f"ops {hash_key(env_key)}, ops2 {hash_key('lsk_other')}", reload_s=0.0)
    assert ring.configured and ring.key_ids == ["ops", "ops2", "file-key"]
    assert ring.check(env_key) == "ops" and ring.check(key) == "file-key"
    assert ring.check(None) is None and ring.check("") is None and ring.check("x" * 10_000) is None
    (tmp_path / "k").unlink()
    assert ring.check(key) is None and ring.check(env_key) == "ops"  # fail closed for the file's keys
    now = [0.0]
    slow = KeyRing(None, f"ops {hash_key(env_key)}", reload_s=5.0, clock=lambda: now[0])
    assert slow.path is None and slow.check(env_key) == "ops"


def test_a_bad_key_file_stops_the_start_without_echoing_it(lake_cfg, model_source, tmp_path):
    pasted = "lsk_this-is-a-raw-key-pasted-by-mistake"
    key_file = tmp_path / "keys"
    key_file.write_text(f"# keys\nok sha256:{'0' * 64}\n{pasted}\n")
    with pytest.raises(ValueError, match=r"keys, line 3: not '<key id> sha256:") as err:
        _app(lake_cfg, model_source, tmp_path, api_keys_file=str(key_file))
    assert pasted not in str(err.value)
    with pytest.raises(FileNotFoundError, match="lockstep serve-keys add"):
        _app(lake_cfg, model_source, tmp_path, api_keys_file=str(tmp_path / "missing"))
    key_file.write_text(f"a sha256:{'0' * 64}\na sha256:{'1' * 64}\n")
    with pytest.raises(ValueError, match="key id 'a' is used twice"):
        KeyRing(key_file)


def test_a_bad_line_added_while_running_is_skipped_not_fatal(tmp_path, caplog):
    _, key = add_key(tmp_path / "k", "one")
    ring = KeyRing(tmp_path / "k", reload_s=0.0)
    with open(tmp_path / "k", "a") as f:
        f.write("lsk_a-raw-key-pasted\n")
    with caplog.at_level(logging.ERROR, logger="jobs.serving.auth"):
        assert ring.check(key) == "one"
    assert "line 3" in caplog.text and "lsk_a-raw-key-pasted" not in caplog.text


def test_no_keys_configured_is_open_and_says_so(lake_cfg, model_source, tmp_path, caplog):
    app = _app(lake_cfg, model_source, tmp_path)
    with caplog.at_level(logging.WARNING, logger="jobs.serving.app"), TestClient(app) as c:
        assert c.get("/health").json()["auth"] == "open"
        assert c.post("/predict", json=BODY).status_code == 200
    assert "NO API KEYS CONFIGURED" in caplog.text


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"entity_id": [5], "request_time": BODY["request_time"]}, ["body", "entity_id"]),
        ({"entity_id": 5, "request_time": 1997}, ["body", "request_time"]),
        ({"entity_id": 5, "request_time": "not a time"}, ["body", "request_time"]),
        ({"entity_id": 5, "mode": "bogus"}, ["body", "mode"]),
        ({"entity_id": 5, "request_id": "r" * 129}, ["body", "request_id"]),
        ({"entity_id": "x" * 257}, ["body", "entity_id"]),
        ({"customer_id": "five"}, ["body", "customer_id"]),
        ({"keys": {"customer_id": 1.5}}, ["body", "keys", "customer_id"]),
        ({"request_time": BODY["request_time"]}, ["body", "customer_id"]),
    ],
)
def test_bad_fields_are_422_naming_the_field(lake_cfg, model_source, tmp_path, body, loc):
    app = _app(lake_cfg, model_source, tmp_path)
    with TestClient(app) as c:
        r = c.post("/predict", json=body)
    assert r.status_code == 422
    assert loc in [d["loc"][: len(loc)] for d in r.json()["detail"]], r.json()
    assert read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL).empty


def test_a_body_over_the_limit_is_413_unread(lake_cfg, model_source, tmp_path):
    app = _app(lake_cfg, model_source, tmp_path, max_body_bytes=200)
    with TestClient(app) as c:
        big = c.post("/predict", json={**BODY, "padding": "x" * 300})
        chunked = c.post("/predict", content=iter([b'{"entity_id": 5, "pad": "', b"x" * 300, b'"}']))
        small = c.post("/predict", json=BODY)
    for r in (big, chunked):
        assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body"]
    assert small.status_code == 200


def test_serve_keys_command_prints_the_key_once_and_stores_its_hash(tmp_path, capsys):
    f = tmp_path / "keys"
    assert main(["serve-keys", "--file", str(f), "add", "--id", "ci"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("lsk_") and len(key) == 47 and key not in out.err
    assert key not in f.read_text() and hash_key(key) in f.read_text()
    assert KeyRing(f).check(key) == "ci"
    assert main(["serve-keys", "--file", str(f), "add", "--id", "ci"]) == 1  # an id is used once
    assert main(["serve-keys", "--file", str(f), "list"]) == 0 and capsys.readouterr().out == "ci\n"
    assert main(["serve-keys", "--file", str(f), "revoke", "ci"]) == 0
    assert KeyRing(f).check(key) is None


def test_serve_refuses_an_open_service_on_a_public_address(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    assert "no API keys configured" in capsys.readouterr().err
