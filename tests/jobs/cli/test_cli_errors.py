"""A failing ``lockstep`` command, run for real as ``python -m jobs.cli``: one message naming the table, the day
and the cause, exit status 1, no traceback; the traceback too with the global ``--debug``."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import repo
from jobs.config import Config
from jobs.ingest.cdnow import ingest_cdnow
from jobs.scoring.batch import predictions_table

ROOT = Path(__file__).resolve().parents[3]
MODEL = repo.load().model("repurchase_90d")
RAW = "raw_events/cdnow_purchases"
SQL_TABLE = MODEL.sql_table_name


def lockstep(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LOCKSTEP_SQL_URL", None)
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "jobs.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    """Raw CDNOW days 1997-01-01..05 with day 03's file truncated; predictions of 1997-01-06 that hold
    customer 7's champion row twice; a serving WAL whose second line is garbled; a CDNOW log with a line of 5 fields."""
    root = tmp_path_factory.mktemp("errors")
    cfg = Config(lake_root=str(root / "lake"))
    ingest_cdnow(cfg.lake(), "1997-01-01", "1997-01-05")
    (part,) = Path(cfg.lake().table(RAW).partition_path("1997-01-03")).glob("*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    ids = np.array([5, 7, 7], dtype=np.int64)
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "score": [0.1, 0.2, 0.3],
            "model_name": MODEL.name,
            "model_version": 1,
            "role": "champion",
            "feature_set_fingerprint": MODEL.feature_sets[0].fingerprint,
            "scored_at": pd.Timestamp("1997-01-07", tz="UTC"),
        }
    )
    predictions_table(cfg.lake(), MODEL).write_partition("1997-01-06", frame, producer={"job": "test", "models": []})
    wal = root / "wal" / MODEL.name
    wal.mkdir(parents=True)
    (wal / "segment-00000000000000000001-1.jsonl").write_text('{"request_id": "a"}\n{"request_id": \n')
    lines = b" customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n 00002 19970101  1   9.99 4\n"
    (root / "cdnow.txt.gz").write_bytes(gzip.compress(lines))
    return str(root)


@pytest.mark.parametrize(
    "argv,command,parts",
    [
        (
            ("show", RAW, "--ds", "1997-01-09"),
            "show",
            [f"table '{RAW}' has no published partition for ds 1997-01-09"],
        ),
        pytest.param(
            ("snapshot", "--ds", "1997-01-04", "--allow-unvalidated"),
            "snapshot",
            [f"table '{RAW}' ds=1997-01-03: file ", "/ds=1997-01-03/part-", "size is 100 bytes, manifest says"],
            marks=pytest.mark.bad_input("lake: a truncated data file (its size differs from the manifest)"),
        ),
        pytest.param(
            ("publish", "--ds", "1997-01-06"),
            "publish",
            [
                f"table '{MODEL.predictions_table}' ds=1997-01-06: not validated (run `lockstep validate predictions "
                f"--table {MODEL.predictions_table} --ds 1997-01-06`); to publish it anyway for exploration pass "
                "--allow-unvalidated",
            ],
        ),
        pytest.param(
            ("publish", "--ds", "1997-01-06", "--allow-unvalidated"),
            "publish",
            [
                f"IntegrityError: UNIQUE constraint failed: {SQL_TABLE}.ds, {SQL_TABLE}.customer_id, {SQL_TABLE}.role",
                f"publishing {MODEL.predictions_table}/ds=1997-01-06 to SQL table {SQL_TABLE} at sqlite:///",
            ],
            marks=pytest.mark.bad_input("sql: a key already in the prediction table"),
        ),
        (
            ("publish", "--ds", "1997-01-02"),
            "publish",
            [f"table '{MODEL.predictions_table}' has no published partition for ds 1997-01-02"],
        ),
        (("score", "--ds", "1997-01-05"), "score", ["model 'repurchase_90d' has no version or alias 'champion'"]),
        pytest.param(
            ("publish-serving-log", "--ds", "1997-01-06", "--wal-dir", "{root}/wal"),
            "publish-serving-log",
            ["serving WAL segment ", "/wal/repurchase_90d/segment-00000000000000000001-1.jsonl, line 2: not a JSON"],
            marks=pytest.mark.bad_input("serving log: a WAL line that is not JSON"),
        ),
        (
            ("land", "--source", "cdnow_purchases", "--ds", "1997-01-01", "--path", "{root}/cdnow.txt.gz"),
            "land",
            ["/cdnow.txt.gz: malformed data line(s) [2] (file line(s) [3]; expected 4 fields, file line 3 has 5)"],
        ),
    ],
    ids=[
        "show-missing",
        "snapshot-corrupt",
        "publish-unvalidated",
        "publish-integrity",
        "publish-missing",
        "score-no-model",
        "wal-garbled",
        "land-bad-line",
    ],
)
def test_a_platform_error_is_one_line_and_exit_1(lake, argv, command, parts):
    argv = [a.format(root=lake) for a in argv]
    proc = lockstep("--lake", f"{lake}/lake", *argv)
    assert proc.returncode == 1, proc.stderr
    *progress, line = proc.stderr.strip().splitlines()  # progress bars may come before it
    assert line.startswith(f"lockstep {command}: error: ") and "error" not in "".join(progress), proc.stderr
    for part in parts:
        assert part in line, line
    assert "Traceback" not in proc.stderr


def test_debug_prints_the_traceback_then_the_message(lake):
    proc = lockstep("--lake", f"{lake}/lake", "--debug", "show", RAW, "--ds", "1997-01-09")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):"), proc.stderr
    assert "jobs.lake.MissingPartitionError: table" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"lockstep show: error: table '{RAW}' has no published partition for ds 1997-01-09"
    )
