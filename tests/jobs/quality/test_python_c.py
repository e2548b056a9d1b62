"""A validation run from ``python -c``: Great Expectations' import of ``pyspark.sql.connect`` must not end the
process (pyspark takes a ``__main__`` without a file for its doctest runner and exits 0 when a Spark Connect
requirement is missing; see ``jobs/quality/__init__.py``)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_validate_support import RAW_TABLE, alerts, land, raw_day

pytest_plugins = ["test_validate_support"]  # fixtures: cdnow, cfg, clean_alert_env
pytestmark = pytest.mark.usefixtures("clean_alert_env")

ROOT = Path(__file__).resolve().parents[3]


def test_a_failed_validation_from_python_c_raises_and_quarantines(cfg, cdnow):
    for ds in ("1997-01-01", "1997-01-02"):
        df = raw_day(cdnow, ds)
        if ds == "1997-01-02":
            df.loc[0, "event_ts"] = df.loc[0, "event_ts"] + pd.Timedelta(days=30)
        land(cfg, ds, df, producer={"job": "ingest_cdnow"})
    code = (
        "from jobs.config import Config; from jobs.quality.validate import validate_partition; "
        f"validate_partition(Config(lake_root={cfg.lake_root!r}), 'raw_events', '1997-01-02'); print('returned')"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
        check=False,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Skipping doctests" not in proc.stderr and "returned" not in proc.stdout
    assert f"DataQualityError: data quality raw_events {RAW_TABLE}/ds=1997-01-02: FAILED" in proc.stderr
    assert "[future timestamps]" in proc.stderr
    quarantined = Path(cfg.lake_root, "_quarantine", RAW_TABLE, "ds=1997-01-02")
    assert [p.name for p in quarantined.glob("*/_validation.json")] == ["_validation.json"]
    assert cfg.lake().table(RAW_TABLE).partitions() == ["1997-01-01"]
    assert [a["partition"] for a in alerts(cfg)] == [f"{RAW_TABLE}/ds=1997-01-02"]
