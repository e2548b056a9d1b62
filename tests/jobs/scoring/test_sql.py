"""Prediction tables in SQL: the embedded SQLite default and a real PostgreSQL server started here.

Re-publishing a day replaces exactly that day's rows, in one transaction; a failure midway
leaves the previous rows in place.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from features import registry as feature_registry
from features import repo
from jobs.config import Config
from jobs.lake import UnvalidatedPartitionError
from jobs.quality.validate import validate_range
from jobs.scoring import sql
from jobs.scoring.batch import predictions_table

FS = feature_registry.get("customer_activity_v1")
MODEL = repo.load().model("repurchase_90d")
PG_HINT = "install the server with `apt-get install -y postgresql` (Debian's package; .ci/run does this)"


def _pg_bindir() -> str | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(f"{d}/initdb") and os.path.exists(f"{d}/pg_ctl"):
            return d
    found = shutil.which("initdb")
    return os.path.dirname(found) if found and shutil.which("pg_ctl") else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a free port (trust auth, fsync off), stopped afterwards."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {PG_HINT}")
    prefix = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = tempfile.mkdtemp(prefix="lockstep-pg-")
    if prefix:
        shutil.chown(root, "postgres")
    data = os.path.join(root, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd):
        return subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "lockstep", "-E", "UTF8", "--locale=C", "--no-sync")
    run(
        f"{bindir}/pg_ctl",
        "-D",
        data,
        "-l",
        os.path.join(root, "log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        yield f"postgresql+psycopg://lockstep@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    cfg = Config(lake_root=str(tmp_path / "lake"))
    url = None if request.param == "sqlite" else request.getfixturevalue("postgresql_clean")
    return cfg, url


@pytest.fixture
def postgresql_clean(postgres_url):
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS predictions, predictions_late_order, {sql.PUBLISHED}"))
    engine.dispose()
    return postgres_url


def _write_day(cfg, ds, n, seed, version=1):
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1, dtype=np.int64)
    frame = pd.DataFrame(
        {
            "customer_id": np.r_[ids, ids],
            "score": rng.random(2 * n),
            "model_name": "repurchase_90d",
            "model_version": np.r_[np.full(n, version), np.full(n, version + 1)],
            "role": ["champion"] * n + ["challenger"] * n,
            "feature_set_fingerprint": FS.fingerprint,
            "scored_at": pd.Timestamp(ds, tz="UTC") + pd.Timedelta(days=1),
        }
    )
    predictions_table(cfg.lake(), MODEL).write_partition(ds, frame, producer={"job": "test", "models": []})
    return frame.sort_values(["customer_id", "role"], ignore_index=True)


def test_publish_replaces_one_day_idempotently(target):
    cfg, url = target
    d1 = _write_day(cfg, "1997-03-01", 3_000, seed=1)
    _write_day(cfg, "1997-03-02", 500, seed=2)
    r = sql.publish_predictions(cfg, "1997-03-01", MODEL.name, url, batch_rows=1_000, allow_unvalidated=True)
    sql.publish_predictions(cfg, "1997-03-02", MODEL.name, url, allow_unvalidated=True)
    url = url or sql.sql_url(cfg)
    assert r["rows"] == 6_000 and (url.startswith("sqlite:///") or "postgresql" in r["url"])
    got = sql.read_day(url, "1997-03-01")
    np.testing.assert_array_equal(got["score"].to_numpy(), d1["score"].to_numpy())
    assert got["customer_id"].tolist() == d1["customer_id"].tolist() and got["role"].tolist() == d1["role"].tolist()
    first = pd.Timestamp(got["scored_at"][0])  # PostgreSQL: tz-aware; SQLite: naive UTC
    assert (first.tz_convert("UTC").tz_localize(None) if first.tz else first) == pd.Timestamp("1997-03-02")
    sql.publish_predictions(
        cfg, "1997-03-01", MODEL.name, url, allow_unvalidated=True
    )  # again: the same rows, no duplicates
    pd.testing.assert_frame_equal(sql.read_day(url, "1997-03-01"), got)
    # re-scored with fewer customers and a new model: day 1 replaced whole, day 2 untouched
    d1b = _write_day(cfg, "1997-03-01", 1_000, seed=3, version=5)
    sql.publish_predictions(cfg, "1997-03-01", MODEL.name, url, allow_unvalidated=True)
    again = sql.read_day(url, "1997-03-01")
    assert len(again) == 2_000 and set(again["model_version"]) == {5, 6}
    np.testing.assert_array_equal(again["score"].to_numpy(), d1b["score"].to_numpy())
    assert len(sql.read_day(url, "1997-03-02")) == 1_000
    assert sql.referenced_models(url) == {("repurchase_90d", v) for v in (1, 2, 5, 6)}
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT ds, rows, content_fingerprint FROM {sql.PUBLISHED} ORDER BY ds")).all()
    engine.dispose()
    assert [r[1] for r in rows] == [2_000, 1_000]
    assert rows[0][2] == predictions_table(cfg.lake(), MODEL).manifest("1997-03-01").content_fingerprint


def test_a_failed_publish_leaves_the_previous_rows(target, monkeypatch):
    cfg, url = target
    _write_day(cfg, "1997-03-01", 2_000, seed=1)
    sql.publish_predictions(cfg, "1997-03-01", MODEL.name, url, allow_unvalidated=True)
    url = url or sql.sql_url(cfg)
    before = sql.read_day(url, "1997-03-01")
    _write_day(cfg, "1997-03-01", 2_500, seed=9, version=7)
    real, calls = sql.insert_rows, []

    def failing(conn, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("connection lost mid-publish")
        return real(conn, *args)

    monkeypatch.setattr(sql, "insert_rows", failing)
    with pytest.raises(RuntimeError, match="mid-publish"):
        sql.publish_predictions(cfg, "1997-03-01", MODEL.name, url, batch_rows=1_000, allow_unvalidated=True)
    pd.testing.assert_frame_equal(sql.read_day(url, "1997-03-01"), before)
    assert len(calls) == 2  # the first batch was inserted, then rolled back


def test_default_is_an_embedded_sqlite_file_in_the_lake(tmp_path, monkeypatch):
    monkeypatch.delenv(sql.SQL_ENV, raising=False)
    cfg = Config(lake_root=str(tmp_path / "lake"))
    assert sql.sql_url(cfg) == f"sqlite:///{tmp_path / 'lake' / '_sql' / 'lockstep.sqlite'}"
    monkeypatch.setenv(sql.SQL_ENV, "postgresql+psycopg://u:secret@db/x")
    assert sql.sql_url(cfg) == "postgresql+psycopg://u:secret@db/x"


def test_cli_publish(tmp_path, capsys, monkeypatch):
    from jobs import cli

    monkeypatch.delenv(sql.SQL_ENV, raising=False)
    cfg = Config(lake_root=str(tmp_path / "lake"))
    _write_day(cfg, "1997-03-01", 10, seed=1)
    _write_day(cfg, "1997-03-02", 20, seed=2)
    parser = cli.build_parser()
    args = parser.parse_args(["--lake", cfg.lake_root, "publish", "--ds", "1997-03-01", "--to", "1997-03-02"])
    # predictions days that did not pass validation are refused, before the SQL table is touched
    with pytest.raises(UnvalidatedPartitionError) as err:
        args.func(args)
    assert str(err.value).startswith(
        f"table '{MODEL.predictions_table}' ds=1997-03-01: not validated (run `lockstep validate predictions "
        f"--table {MODEL.predictions_table} --ds 1997-03-01`); to publish it anyway for exploration pass "
        "--allow-unvalidated (allow_unvalidated=True)"
    )
    assert not os.path.exists(sql.sql_url(cfg).removeprefix("sqlite:///"))
    validate_range(cfg, "predictions", "1997-03-01", "1997-03-02", model=MODEL.name, docs=False)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "ds=1997-03-01: 20 rows" in out and "ds=1997-03-02: 40 rows" in out
    assert len(sql.read_day(sql.sql_url(cfg), "1997-03-02")) == 40


def test_a_string_keyed_model_gets_string_key_columns(target):
    """A model declared in a test (``serving/string_repo``): its SQL table is keyed by
    (ds, order_id, shop, courier, role), all three ids String columns."""
    from serving.string_keyed import config

    cfg, url = target
    cfg = config(cfg.lake_root)
    model = cfg.repo().model("late_order")
    n = 50
    frame = pd.DataFrame(
        {
            "order_id": [f"o-{i:04d}" for i in range(n)],
            "shop": [f"s{i % 3}" for i in range(n)],
            "courier": [f"c{i % 4}" for i in range(n)],
            "score": np.linspace(0.01, 0.99, n),
            "model_name": model.name,
            "model_version": 3,
            "role": "champion",
            "feature_set_fingerprint": model.fingerprint,
            "scored_at": pd.Timestamp("2024-01-04", tz="UTC"),
        }
    )
    predictions_table(cfg.lake(), model).write_partition("2024-01-03", frame, producer={"job": "test", "models": []})
    r = sql.publish_predictions(cfg, "2024-01-03", "late_order", url, allow_unvalidated=True)
    url = url or sql.sql_url(cfg)
    assert r["table"] == "predictions_late_order" and r["rows"] == n
    got = sql.read_day(url, "2024-01-03", model)
    assert list(got.columns) == [
        "ds",
        "order_id",
        "shop",
        "courier",
        "role",
        "score",
        "model_name",
        "model_version",
        "feature_set_fingerprint",
        "scored_at",
    ]
    assert (
        got["order_id"].tolist() == frame["order_id"].tolist() and got["courier"].tolist() == frame["courier"].tolist()
    )
    np.testing.assert_array_equal(got["score"].to_numpy(), frame["score"].to_numpy())
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        columns = {c["name"]: c["type"] for c in inspector.get_columns("predictions_late_order")}
        pk = inspector.get_pk_constraint("predictions_late_order")["constrained_columns"]
    finally:
        engine.dispose()
    assert all(isinstance(columns[c], sa.String) for c in ("order_id", "shop", "courier"))
    assert sorted(pk) == sorted(["ds", "order_id", "role"])  # the query id identifies a row; keys are attributes
    assert sql.referenced_models(url, model) == {("late_order", 3)}
    sql.publish_predictions(
        cfg, "2024-01-03", "late_order", url, allow_unvalidated=True
    )  # idempotent: no duplicate keys
    assert len(sql.read_day(url, "2024-01-03", model)) == n
