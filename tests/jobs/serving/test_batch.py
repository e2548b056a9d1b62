"""``POST /predict/batch``: the answers of N single ``/predict`` calls, exactly, from one kernel
evaluation per set and ONE model call; one log record per query; degradation as for /predict."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest
from fastapi.testclient import TestClient

import jobs.serving.app as app_module
from jobs.serving.log import model_wal_dir, read_wal
from jobs.serving.model import LinearModel, StaticSource
from jobs.serving.replay import plan_day, request_body

from .conftest import DAY, FS, MODEL
from .test_metrics import samples, value
from .test_service import _app

#: what a batch answer and a single answer must agree on, query by query (not the request id)
SAME = (
    "entity_id",
    "keys",
    "request_time",
    "mode",
    "score",
    "model_version",
    "degraded",
    "degraded_reason",
    "features",
)


class CountingModel(LinearModel):
    """The real linear model, counting its predict calls and rows."""

    calls: list

    def predict_matrix(self, x):
        self.calls.append(len(x))
        return super().predict_matrix(x)


@pytest.fixture
def counting(model):
    m = CountingModel(model.name, model.version, model.feature_set_fingerprint, model.feature_names)
    m.calls = []
    return m


@pytest.mark.parametrize("mode", ["fresh", "materialized"])
def test_a_batch_answers_what_n_single_calls_answer(lake_cfg, lake_events, counting, tmp_path, monkeypatch, mode):
    plan = plan_day(lake_events[0], DAY, 100, seed=5)
    bodies = [request_body(r) for r in plan.itertuples(index=False)]
    bodies[7]["entity_id"] = bodies[3]["entity_id"]  # an entity asked twice in one batch
    bodies[11]["entity_id"] = 10**9  # an entity with no history
    kernel_calls = []
    real = app_module.compute_many
    monkeypatch.setattr(app_module, "compute_many", lambda *a, **k: kernel_calls.append(len(a[1])) or real(*a, **k))
    source = StaticSource(counting)
    with TestClient(_app(lake_cfg, source, tmp_path / "single", mode=mode)) as c:
        singles = [c.post("/predict", json={**b, "request_id": f"s{i}"}).json() for i, b in enumerate(bodies)]
    counting.calls.clear()
    with TestClient(_app(lake_cfg, source, tmp_path / "batch", mode=mode, cache_ttl_s=0.0)) as c:
        r = c.post("/predict/batch", json={"queries": bodies})
        got = samples(c.get("/metrics").text)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["count"] == 100 and [p["request_id"] for p in out["predictions"]] == [b["request_id"] for b in bodies]
    for single, batch in zip(singles, out["predictions"]):
        assert {k: batch[k] for k in SAME} == {k: single[k] for k in SAME}
    assert counting.calls == [100]  # ONE model call for the batch
    assert kernel_calls == ([100] if mode == "fresh" else [])  # ONE kernel evaluation of the set
    logged = read_wal(model_wal_dir(tmp_path / "batch" / "wal", MODEL), MODEL).set_index("request_id")
    one_by_one = read_wal(model_wal_dir(tmp_path / "single" / "wal", MODEL), MODEL)
    one_by_one.index = [b["request_id"] for b in bodies]
    assert len(logged) == 100 and sorted(logged.index) == sorted(b["request_id"] for b in bodies)
    cols = ["entity_id", "request_time", "mode", "score", "degraded", *FS.feature_names]
    pd.testing.assert_frame_equal(logged.loc[one_by_one.index, cols], one_by_one[cols], check_names=False)
    assert value(got, "lockstep_serving_requests_total", endpoint="/predict/batch", mode=mode, status=200) == 1
    assert value(got, "lockstep_serving_predictions_total", mode=mode, degraded="false", model_version="3") == 100
    assert value(got, "lockstep_serving_feature_set_requests_total", mode=mode, outcome="ok") == 100
    assert value(got, "lockstep_serving_feature_set_latency_seconds_count", mode=mode) == 1


def test_a_batch_on_a_down_store_degrades_every_query_and_logs_each(lake_cfg, model_source, tmp_path):
    from jobs.serving.store import StoreUnavailable

    class Down:
        def events(self, entity_id):
            raise StoreUnavailable("store_error", "simulated")

    queries = [{"entity_id": e, "request_time": f"{DAY}T01:00:00Z"} for e in (5, 17, 5)]
    with TestClient(_app(lake_cfg, model_source, tmp_path, store=Down())) as c:
        r = c.post("/predict/batch", json={"queries": queries}).json()
        m = c.get("/metrics.json").json()
        got = samples(c.get("/metrics").text)
    assert [p["degraded_reason"] for p in r["predictions"]] == ["store_error"] * 3
    assert all(p["features"]["txn_count_30d"] == 0 and p["features"]["recency_days"] is None for p in r["predictions"])
    logged = read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL)
    assert logged.degraded.tolist() == [True] * 3 and m["store_errors"] == 3 and m["degraded"] == 3
    assert value(got, "lockstep_serving_store_errors_total", feature_set=FS.name) == 3
    assert value(got, "lockstep_serving_predictions_total", mode="fresh", degraded="true") == 3


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"queries": [{"entity_id": 5}] * 6}, ["body", "queries"]),  # max_batch 5
        ({"queries": []}, ["body", "queries"]),
        ({"queries": [{"entity_id": 5}, {"entity_id": "five"}]}, ["body", "queries", 1, "entity_id"]),
        ({"queries": [{"entity_id": 5}, {}]}, ["body", "queries", 1, "customer_id"]),
        ({"queries": [{"entity_id": 5, "mode": "fresh"}]}, ["body", "queries", 0, "mode"]),
        ({"queries": [{"entity_id": 5, "request_time": 3}]}, ["body", "queries", 0, "request_time"]),
        ({"queries": [{"entity_id": 5, "request_id": "a"}, {"entity_id": 6, "request_id": "a"}]}, None),
        ({"queries": [{"entity_id": 5}], "mode": "bogus"}, ["body", "mode"]),
        ({"queries": {"entity_id": 5}}, ["body", "queries"]),
        ({"queries": [{"entity_id": 5}], "extra": 1}, ["body", "extra"]),
    ],
)
def test_bad_batches_are_422_naming_the_field_and_log_nothing(lake_cfg, model_source, tmp_path, body, loc):
    loc = loc or ["body", "queries", 1, "request_id"]
    with TestClient(_app(lake_cfg, model_source, tmp_path, max_batch=5)) as c:
        r = c.post("/predict/batch", json=body)
    assert r.status_code == 422
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()
    assert read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL).empty


def test_a_batch_the_log_cannot_take_whole_is_503_and_none_is_logged(lake_cfg, model_source, tmp_path):
    from jobs.serving.log import ServingLog

    slog = ServingLog(model_wal_dir(tmp_path / "wal", MODEL), MODEL, queue_size=2)  # never started: nothing drains
    queries = [{"entity_id": e, "request_time": f"{DAY}T01:00:00Z"} for e in (5, 17, 23)]
    with TestClient(_app(lake_cfg, model_source, tmp_path, serving_log=slog)) as c:
        r = c.post("/predict/batch", json={"queries": queries})
        got = samples(c.get("/metrics").text)
    assert r.status_code == 503 and slog.queue_depth == 0  # all or none: none queued
    assert value(got, "lockstep_serving_log_refused_total", reason="queue_full") == 3
    assert value(got, "lockstep_serving_requests_total", endpoint="/predict/batch", status=503) == 1


def _wal_records(wal_root) -> dict[str, dict]:
    """Every WAL record as written (JSON lines, fields in order), by request id."""
    import json

    lines = [
        json.loads(line)
        for seg in sorted(model_wal_dir(wal_root, MODEL).glob("segment-*.jsonl"))
        for line in seg.read_text().splitlines()
    ]
    return {rec["request_id"]: rec for rec in lines}


@pytest.mark.parametrize("mode", ["fresh", "materialized"])
def test_a_batch_answers_and_logs_exactly_what_n_single_calls_do(lake_cfg, lake_events, model, tmp_path, mode):
    """Every field of every answer and of every record (but the batch's timings) equals the single
    call's: the batch path's own encoding, record building and request ids change nothing."""
    import json

    plan = plan_day(lake_events[0], DAY, 60, seed=9)
    bodies = [request_body(r) for r in plan.itertuples(index=False)]
    bodies[4]["entity_id"] = bodies[2]["entity_id"]
    bodies[9]["entity_id"] = 10**9  # no history
    for b in bodies[50:]:
        b.pop("request_id")  # the service names these
    source = StaticSource(model)
    with TestClient(_app(lake_cfg, source, tmp_path / "batch", mode=mode)) as c:
        r = c.post("/predict/batch", json={"queries": bodies})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    batch = r.json()["predictions"]
    ids = [p["request_id"] for p in batch]
    assert ids[:50] == [b["request_id"] for b in bodies[:50]]
    for i in ids[50:]:  # uuid4 hex, distinct
        assert uuid.UUID(hex=i).version == 4 and uuid.UUID(hex=i).hex == i
    assert len(set(ids)) == 60
    with TestClient(_app(lake_cfg, source, tmp_path / "single", mode=mode)) as c:
        singles = [c.post("/predict", json={**b, "request_id": i}).json() for b, i in zip(bodies, ids)]
    assert batch == singles  # every field, in the same order
    assert [list(p) for p in batch] == [list(p) for p in singles]
    assert json.loads(r.content) == json.loads(json.dumps(r.json()))
    timings = {"served_at", "latency_ms"}
    logged, one_by_one = _wal_records(tmp_path / "batch" / "wal"), _wal_records(tmp_path / "single" / "wal")
    assert sorted(logged) == sorted(ids)
    for i in ids:
        assert list(logged[i]) == list(one_by_one[i])
        assert {k: v for k, v in logged[i].items() if k not in timings} == {
            k: v for k, v in one_by_one[i].items() if k not in timings
        }
    assert len({rec["served_at"] for rec in logged.values()}) == 1  # one batch, one instant


def test_make_records_makes_what_make_record_makes():
    from jobs.serving.log import make_record, make_records

    common = {"served_at": pd.Timestamp("2024-01-02T03:04:05.678901Z"), "mode": "fresh", "latency_ms": 1.5}
    rows = [
        {"request_id": "a", "entity_id": 5, "request_time": pd.Timestamp("2024-01-01T00:00:00.000001Z"), "score": 0.5},
        {"request_id": "b", "entity_id": 6, "request_time": "2024-01-01T12:00:00+01:00", "txn_count_30d": 3},
        {"request_id": "c", "request_time": 1_700_000_000_000_000, "degraded": True, "not_a_field": "x"},
        {"request_id": "d", "request_time": None},
    ]
    got = make_records(MODEL, rows, **common)
    want = [make_record(MODEL, **common, **row) for row in rows]
    assert got == want and [list(r) for r in got] == [list(r) for r in want]
    assert got[1]["request_time"] == 1704106800000000 and got[0]["served_at"] == 1704164645678901
    assert make_records(MODEL, [], **common) == []


def test_uuid4_hexes_are_uuid4_hex():
    got = app_module.uuid4_hexes(500)
    assert len(got) == 500 == len(set(got))
    for h in got:
        u = uuid.UUID(hex=h)
        assert u.hex == h and u.version == 4 and u.variant == uuid.RFC_4122
    assert app_module.uuid4_hexes(0) == []


class NaNModel(LinearModel):
    """The real linear model, scoring NaN for its third row."""

    def predict_matrix(self, x):
        out = super().predict_matrix(x).astype(float)
        if len(out) > 2:
            out[2] = float("nan")
        return out


def test_a_batch_with_a_record_json_cannot_hold_is_503_none_logged_and_the_log_keeps_serving(lake_cfg, model, tmp_path):
    nan = NaNModel(model.name, model.version, model.feature_set_fingerprint, model.feature_names)
    queries = [{"entity_id": e, "request_time": f"{DAY}T01:00:00Z", "request_id": f"q{e}"} for e in (5, 17, 23, 29)]
    with TestClient(_app(lake_cfg, StaticSource(nan), tmp_path)) as c:
        bad = c.post("/predict/batch", json={"queries": queries})
        good = c.post("/predict/batch", json={"queries": queries[:2]})  # two rows: no NaN
        single = c.post("/predict", json={"entity_id": 5, "request_time": f"{DAY}T02:00:00Z", "request_id": "s"})
        got = samples(c.get("/metrics").text)
    assert bad.status_code == 503 and "score is nan" in bad.json()["detail"], bad.text
    assert good.status_code == 200 and single.status_code == 200  # the writer survived it
    logged = read_wal(model_wal_dir(tmp_path / "wal", MODEL), MODEL)
    assert sorted(logged.request_id) == ["q17", "q5", "s"]  # none of the refused batch's four
    assert value(got, "lockstep_serving_log_refused_total", reason="write_error") == 4


def test_wal_lines_hold_the_values_json_dumps_writes():
    import json

    from jobs.serving.log import encode_record

    rec = {"request_id": "a", "score": 1.049001171530397e18, "x": 5e-324, "y": -0.0, "z": 1 / 3, "n": None, "b": True}
    rec |= {"s": 'é \u2028 " \\ \n', "i": 2**62, "t": 1_700_000_000_000_000}
    line = encode_record(rec)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert json.loads(line) == json.loads(json.dumps(rec, allow_nan=False)) == rec
    assert list(json.loads(line)) == list(rec)
    for v in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="'a': score is"):
            encode_record({**rec, "score": v})
    with pytest.raises(TypeError):
        encode_record({**rec, "score": object()})


def test_compute_many_is_compute_one_query_by_query_types_included(lake_events):
    from features.kernel import index_events
    from features.online import compute_many, compute_one

    events = lake_events[0]
    index = index_events(events, FS)
    plan = plan_day(events, DAY, 200, seed=11)
    ids = [int(e) for e in plan.entity_id] + [10**9]  # and an entity with no events
    times = list(plan.request_time) + [pd.Timestamp(f"{DAY}T05:00:00Z")]
    got = compute_many(index, ids, times, FS)
    want = [compute_one(index, e, t, FS) for e, t in zip(ids, times)]
    assert got == want
    assert [[type(v) for v in g.values()] for g in got] == [[type(v) for v in w.values()] for w in want]
    assert [list(g) for g in got] == [list(w) for w in want]
    assert compute_many(index, [], [], FS) == []


def test_l1_histories_are_history_of_each_counted_the_same(lake_events):
    from jobs.serving.store import EmbeddedStore, L1Cache, StoreUnavailable

    store = EmbeddedStore(FS, lake_events[0])

    class Flaky:  # the embedded store, failing for one entity
        fs = FS

        def history(self, e):
            if e == 17:
                raise StoreUnavailable("store_error", "simulated")
            return store.history(e)

    one, bulk = L1Cache(Flaky(), ttl_s=60.0), L1Cache(Flaky(), ttl_s=60.0)
    one.history(5), bulk.history(5)
    want = []
    for e in (5, 17, 23, 10**9):
        try:
            want.append(one.history(e))
        except StoreUnavailable as exc:
            want.append(exc.reason)
    got = bulk.histories([5, 17, 23, 10**9])
    assert [g.reason if isinstance(g, StoreUnavailable) else g for g in got] == want
    assert (bulk.hits, bulk.misses) == (one.hits, one.misses) == (1, 4)
    assert bulk.peek(23) is want[2] and bulk.peek(17) is None  # a failure is not cached
    off = L1Cache(Flaky(), ttl_s=0)
    assert off.histories([5, 5]) == [store.history(5)] * 2 and (off.hits, off.misses) == (0, 2)
