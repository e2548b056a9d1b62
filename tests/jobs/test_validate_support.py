"""Shared data and checks for the validation tests (no tests here): CDNOW-derived frames of every
dataset, a sloppy producer that lands whatever it is given, and the "stopped the line" check."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import registry
from features.kernel import compute, snapshot_queries
from jobs.config import Config
from jobs.ingest.cdnow import iter_ingest_days, read_cdnow
from jobs.lake import MANIFEST, Manifest, MissingPartitionError, row_hash_sums, sign
from jobs.schemas import feature_schema, raw_schema, to_raw

FS = registry.get("customer_activity_v1")
SOURCE = FS.source
#: The CDNOW source's raw table and its schema.
RAW_TABLE = SOURCE.table
RAW_EVENTS = raw_schema(SOURCE)


def to_raw_events(frame):
    return to_raw(SOURCE, frame)


DAYS = ("1997-03-01", "1997-03-02")  # published history before the day under test
DAY = "1997-03-03"


@pytest.fixture(scope="session")
def cdnow() -> pd.DataFrame:
    return read_cdnow()


_DAYS: dict[tuple[int, str], pd.DataFrame] = {}


def raw_day(cdnow: pd.DataFrame, ds: str) -> pd.DataFrame:
    """CDNOW's rows ingested on `ds`, in the raw schema of the CDNOW source (pandas; a fresh copy)."""
    key = (id(cdnow), ds)
    if key not in _DAYS:
        ((_, part),) = iter_ingest_days(cdnow, ds, ds)
        _DAYS[key] = to_raw_events(part).to_pandas()
    return _DAYS[key].copy()


@pytest.fixture
def cfg(tmp_path) -> Config:
    return Config(lake_root=str(tmp_path / "lake"), engine="local")


@pytest.fixture
def history(cfg, cdnow) -> Config:
    """A lake with clean raw_events for DAYS, published the way the ingest does."""
    table = cfg.lake().table(RAW_TABLE, RAW_EVENTS)
    for ds in DAYS:
        table.write_partition(ds, raw_day(cdnow, ds), producer={"job": "ingest_cdnow"})
    return cfg


def land(cfg: Config, ds: str, frame, table: str = RAW_TABLE, producer: dict | None = None):
    """A producer that does not know the contract: publishes the frame as it is (no schema)."""
    return cfg.lake().table(table).write_partition(ds, frame, producer=producer or {"job": "sloppy"})


def snapshot_frame(cdnow: pd.DataFrame, ds: str) -> pd.DataFrame:
    """Feature snapshot `ds` computed by the kernel from CDNOW (as build_snapshot does)."""
    cutoff = pd.Timestamp(ds, tz="UTC") + pd.Timedelta(days=1)
    events = cdnow[cdnow["ingested_at"] < cutoff]
    out = compute(events, snapshot_queries(events, FS, cutoff), FS)
    return pa.Table.from_pandas(out, schema=feature_schema(FS), preserve_index=False).to_pandas()


def snapshot_producer(fingerprint: str | None = None) -> dict:
    return {"job": "build_snapshot", "feature_set": FS.name, "feature_set_fingerprint": fingerprint or FS.fingerprint}


def training_frame(cdnow: pd.DataFrame, cutoff: str, seed: int = 0) -> pd.DataFrame:
    """A training set of cut-off `cutoff`: every customer known at it, kernel features at as_of =
    cut-off, and 0/1 labels (purchase in the next 90 days)."""
    c = pd.Timestamp(cutoff, tz="UTC")
    known = cdnow[cdnow["ingested_at"] < c]
    q = pd.DataFrame({FS.entity: np.sort(known[FS.entity].unique())})
    q["as_of"] = c
    later = cdnow[(cdnow["event_ts"] >= c) & (cdnow["event_ts"] < c + pd.Timedelta(days=90))]
    q["label"] = q[FS.entity].isin(later[FS.entity]).astype("int8")
    out = compute(known, q, FS)
    return pa.Table.from_pandas(out, schema=feature_schema(FS, [("label", "int8")]), preserve_index=False).to_pandas()


def predictions_frame(snapshot: pd.DataFrame, ds: str) -> pd.DataFrame:
    """Predictions of snapshot `ds`: a monotone squashing of 30-day spend into (0, 1)."""
    score = 1 - np.exp(-snapshot["spend_sum_30d"].to_numpy() / 50.0)
    return pd.DataFrame(
        {
            FS.entity: snapshot[FS.entity].to_numpy(),
            "score": score,
            "model_name": "repurchase",
            "model_version": 3,
            "role": "champion",
            "feature_set_fingerprint": FS.fingerprint,
            "scored_at": pd.Timestamp(ds, tz="UTC") + pd.Timedelta(days=1, hours=2),
        }
    )


SERVING_BASE = [
    ("request_id", pa.string()),
    ("entity_id", pa.int64()),
    ("request_time", pa.timestamp("us", tz="UTC")),
    ("served_at", pa.timestamp("us", tz="UTC")),
    ("mode", pa.string()),
    ("feature_set", pa.string()),
    ("feature_set_fingerprint", pa.string()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("score", pa.float64()),
    ("latency_ms", pa.float64()),
    ("degraded", pa.bool_()),
    ("degraded_reason", pa.string()),
    ("snapshot_ds", pa.string()),
    ("arm", pa.string()),
    ("shadow_version", pa.string()),
    ("shadow_score", pa.float64()),
]


def serving_schema() -> pa.Schema:
    return pa.schema(
        [pa.field(n, t) for n, t in SERVING_BASE]
        + [pa.field(f.name, pa.int64() if f.is_integer else pa.float64()) for f in FS.features]
    )


def serving_frame(cdnow: pd.DataFrame, ds: str, n: int = 60, seed: int = 0) -> pa.Table:
    """Serving-log rows of day `ds`: requests for CDNOW customers, features from the kernel at the
    request time, as the service logs them."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(ds, tz="UTC")
    customers = np.sort(cdnow.loc[cdnow["ingested_at"] < start, FS.entity].unique())
    q = pd.DataFrame({FS.entity: rng.choice(customers, n, replace=False)})
    q["as_of"] = start + pd.to_timedelta(np.sort(rng.integers(0, 86_400_000_000, n)), unit="us")
    feats = compute(cdnow, q, FS, mode="known_at")
    df = pd.DataFrame(
        {
            "request_id": [f"req-{ds}-{i:05d}" for i in range(n)],
            "entity_id": q[FS.entity].to_numpy(),
            "request_time": feats["as_of"],
            "served_at": feats["as_of"] + pd.Timedelta(milliseconds=3),
            "mode": np.where(np.arange(n) % 3 == 0, "materialized", "fresh"),
            "feature_set": FS.name,
            "feature_set_fingerprint": FS.fingerprint,
            "model_name": "repurchase",
            "model_version": "3",
            "score": rng.random(n),
            "latency_ms": rng.uniform(0.5, 20, n),
            "degraded": False,
            "degraded_reason": None,
            "snapshot_ds": None,
            "arm": "champion",
            "shadow_version": None,
            "shadow_score": None,
        }
    )
    for f in FS.features:
        df[f.name] = feats[f.name].to_numpy()
    return pa.Table.from_pandas(df, schema=serving_schema(), preserve_index=False)


def tamper(lake, table: str, ds: str, edit, *, fingerprint=False, resign=None, manifest_name=MANIFEST):
    """Rewrite the first part file of ``table``/``ds`` with ``edit(rows)`` and make the manifest (or, with
    ``manifest_name=CANDIDATE``, the pending candidate's) agree: the file's bytes, sha256 and row count
    always; the content fingerprint too if ``fingerprint`` (a careful tamperer who knows how it is
    computed); a signature under the key ``resign`` if given. Returns the edited manifest and the file."""
    pdir = lake.table(table).partition_path(ds)
    mpath = os.path.join(pdir, manifest_name)
    with open(mpath, "rb") as fh:
        m = Manifest.from_json(fh.read())
    path = os.path.join(pdir, m.files[0]["name"])
    old = pq.read_table(path)
    new = pa.Table.from_pandas(edit(old.to_pandas()), schema=old.schema, preserve_index=False)
    pq.write_table(new, path, compression="zstd")
    with open(path, "rb") as fh:
        data = fh.read()
    m.files[0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), rows=new.num_rows)
    m.rows = sum(f["rows"] for f in m.files)
    if fingerprint:
        s1 = s2 = 0
        for f in m.files:
            h1, h2 = row_hash_sums(pq.read_table(os.path.join(pdir, f["name"])))
            s1, s2 = (s1 + h1) % 2**64, (s2 + h2) % 2**64
        schema = json.dumps(m.schema, sort_keys=True)
        m.content_fingerprint = hashlib.sha256(f"{schema}|{m.rows}|{s1:016x}|{s2:016x}".encode()).hexdigest()
    if resign is not None:
        m.signature = sign(m, resign)
    with open(mpath, "w") as fh:
        fh.write(m.to_json())
    return m, path


def alerts(cfg: Config) -> list[dict]:
    path = os.path.join(cfg.lake_root, "_alerts", "alerts.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def assert_stopped(cfg: Config, err, dataset: str, table: str, ds: str, *phrases: str, downstream=None) -> None:
    """The line stopped loudly: a clear error, a quarantined partition, an alert, nothing downstream."""
    msg = str(err)
    assert f"data quality {dataset} {table}/ds={ds}: FAILED" in msg, msg
    for phrase in phrases:
        assert phrase in msg, f"{phrase!r} not in:\n{msg}"
    report = err.report_path
    assert report and os.path.isfile(report) and f"report: {report}" in msg, msg
    q = err.quarantine_path
    assert q and os.path.isdir(q) and f"quarantined: {q}" in msg, msg
    qfiles = os.listdir(q)
    assert "_manifest.json" in qfiles and any(f.endswith(".parquet") for f in qfiles), qfiles
    with open(os.path.join(q, "_validation.json")) as fh:
        stored = json.load(fh)
    assert stored["success"] is False and stored["failed"], stored
    lake = cfg.lake()
    assert not lake.table(table).exists(ds)
    with pytest.raises(MissingPartitionError, match=ds):
        lake.table(table).read(ds)
    lines = [a for a in alerts(cfg) if a["partition"] == f"{table}/ds={ds}"]
    assert len(lines) == 1, alerts(cfg)
    assert lines[0]["quarantine"] == q and lines[0]["report"] == report
    assert lines[0]["dataset"] == dataset and lines[0]["failed"]
    if downstream is not None:
        with pytest.raises(MissingPartitionError, match=ds):
            downstream()


ALERT_ENV = (
    "LOCKSTEP_ALERTS_LOG",
    "LOCKSTEP_SMTP_HOST",
    "LOCKSTEP_SMTP_PORT",
    "LOCKSTEP_SMTP_FROM",
    "LOCKSTEP_SMTP_TO",
    "LOCKSTEP_SMTP_USER",
    "LOCKSTEP_SMTP_PASSWORD",
    "LOCKSTEP_SMTP_STARTTLS",
    "LOCKSTEP_WEBHOOK_URL",
    "LOCKSTEP_ALERT_DEDUP_SECONDS",
    "LOCKSTEP_ALERT_TIMEOUT_SECONDS",
    "LOCKSTEP_VALIDATE_BATCH_ROWS",
    "LOCKSTEP_EXPECTATIONS_DIR",
    "LOCKSTEP_LAKE_KEY",
    "LOCKSTEP_LAKE_KEY_FILE",
)


@pytest.fixture
def clean_alert_env(monkeypatch):
    """No alert channel or validation setting leaks in from the environment."""
    for var in ALERT_ENV:
        monkeypatch.delenv(var, raising=False)
