"""``lockstep validate DATASET --ds ... [--to ...]``: exit 0 pass, 1 data-quality failure, 2 usage error."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_validate_support import RAW_TABLE, alerts, land, raw_day

from jobs.cli.quality import add_validate_parser

pytest_plugins = ["test_validate_support"]  # fixtures: cdnow, cfg, history, clean_alert_env
pytestmark = pytest.mark.usefixtures("clean_alert_env")


def lockstep(*argv) -> int:
    """The ``lockstep`` top level as jobs/cli/ builds it, with the validate subcommand hooked in."""
    p = argparse.ArgumentParser(prog="lockstep")
    p.add_argument("--lake")
    p.add_argument("--engine", choices=("local", "dask", "spark"))
    sub = p.add_subparsers(dest="command")
    add_validate_parser(sub)
    args = p.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def lake(cfg, cdnow):
    for ds in ("1997-01-01", "1997-01-02", "1997-01-03"):
        df = raw_day(cdnow, ds)
        if ds == "1997-01-03":
            df.loc[0, "event_ts"] = df.loc[0, "event_ts"] + pd.Timedelta(days=30)
        land(cfg, ds, df, producer={"job": "ingest_cdnow"})
    return cfg.lake_root


def test_passing_partitions_exit_0(lake, capsys):
    assert lockstep("--lake", lake, "validate", "raw_events", "--ds", "1997-01-01", "--to", "1997-01-02") == 0
    out = capsys.readouterr().out
    assert "raw_events raw_events/cdnow_purchases/ds=1997-01-01: passed" in out and "ds=1997-01-02: passed" in out


def test_a_failing_partition_exits_1_and_says_why(lake, capsys, cfg):
    assert lockstep("--lake", lake, "validate", "raw_events", "--ds", "1997-01-02", "--to", "1997-01-03") == 1
    captured = capsys.readouterr()
    assert "raw_events/cdnow_purchases/ds=1997-01-03: FAILED" in captured.out and "[future timestamps]" in captured.out
    assert "quarantined: " in captured.out and "1 of 2 partition(s) failed" in captured.err
    assert [a["partition"] for a in alerts(cfg)] == ["raw_events/cdnow_purchases/ds=1997-01-03"]


def test_report_only_mode_leaves_the_partition_and_sends_nothing(lake, cfg):
    assert (
        lockstep("--lake", lake, "validate", "raw_events", "--ds", "1997-01-03", "--no-quarantine", "--no-alert") == 1
    )
    table = cfg.lake().table(RAW_TABLE)
    assert table.exists("1997-01-03") and alerts(cfg) == []
    stored = json.loads((Path(table.partition_path("1997-01-03")) / "_validation.json").read_text())
    assert stored["success"] is False and stored["quarantine_path"] is None


@pytest.mark.parametrize(
    "argv,message",
    [
        (("validate", "raw_events"), "--ds is required"),
        (("validate", "raw_events", "--ds", "1997-02-30"), "ds must be a YYYY-MM-DD date"),
        (("validate", "training_sets", "--ds", "1997-01-01", "--feature-set", "nope_v9"), "unknown feature set"),
    ],
)
def test_usage_errors_exit_2(lake, capsys, argv, message):
    assert lockstep("--lake", lake, *argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_dataset_is_an_argparse_error():
    with pytest.raises(SystemExit) as info:
        lockstep("validate", "raw_evnts", "--ds", "1997-01-01")
    assert info.value.code == 2


def test_show_suite_prints_the_bound_suite(capsys):
    assert lockstep("validate", "feature_snapshots", "--show-suite") == 0
    suite = json.loads(capsys.readouterr().out)
    assert suite["name"] == "feature_snapshots.customer_activity_v1"
    assert any(e["kwargs"].get("column") == "txn_count_7d" for e in suite["expectations"])


@pytest.mark.parametrize(
    "argv,name,table",
    [
        (("raw_events", "--source", "cdnow_purchases"), "raw_events.cdnow_purchases", "raw_events/cdnow_purchases"),
        (
            ("feature_snapshots", "--feature-set", "customer_activity_v1"),
            "feature_snapshots.customer_activity_v1",
            None,
        ),
        (("training_sets", "--model", "repurchase_90d"), "training_sets.repurchase_90d", None),
        (("serving_logs", "--model", "repurchase_90d"), "serving_logs.repurchase_90d", None),
    ],
)
def test_show_suite_of_a_named_declaration(capsys, argv, name, table):
    assert lockstep("validate", *argv, "--show-suite") == 0
    suite = json.loads(capsys.readouterr().out)
    assert suite["name"] == name
    if table:
        assert suite["meta"]["lockstep"]["table"] == table


def test_validate_names_the_source(lake, capsys):
    assert lockstep("--lake", lake, "validate", "raw_events", "--source", "cdnow_purchases", "--ds", "1997-01-01") == 0
    assert "raw_events raw_events/cdnow_purchases/ds=1997-01-01: passed" in capsys.readouterr().out
    assert lockstep("--lake", lake, "validate", "raw_events", "--source", "nope", "--ds", "1997-01-01") == 2
    assert "unknown source 'nope'" in capsys.readouterr().err


def test_a_range_reports_every_bad_day_and_validates_the_good_ones(cfg, cdnow):
    """``python -m jobs.cli validate`` over 01..05: 02 never landed, 03 fails, 05 past the data."""
    for ds in ("1997-01-01", "1997-01-03", "1997-01-04"):
        df = raw_day(cdnow, ds)
        if ds == "1997-01-03":
            df.loc[0, "event_ts"] = df.loc[0, "event_ts"] + pd.Timedelta(days=30)
        land(cfg, ds, df, producer={"job": "ingest_cdnow"})
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "jobs.cli", "--lake", cfg.lake_root, "validate", "raw_events"]
        + ["--ds", "1997-01-01", "--to", "1997-01-05"],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    verdicts = [line for line in proc.stdout.splitlines() if line.startswith("raw_events ")]
    assert [v.split(": ")[0].split("ds=")[1] for v in verdicts] == [
        "1997-01-01",
        "1997-01-02",
        "1997-01-04",
        "1997-01-05",
    ]
    assert "ds=1997-01-01: passed" in verdicts[0] and "ds=1997-01-04: passed" in verdicts[2]
    assert verdicts[1] == f"raw_events {RAW_TABLE}/ds=1997-01-02: MISSING (no published partition)"
    assert verdicts[3] == f"raw_events {RAW_TABLE}/ds=1997-01-05: MISSING (no published partition)"
    assert f"data quality raw_events {RAW_TABLE}/ds=1997-01-03: FAILED" in proc.stdout
    assert "[future timestamps]" in proc.stdout and "quarantined: " in proc.stdout
    assert proc.stderr.splitlines() == [
        f"lockstep validate: error: table '{RAW_TABLE}' has no published partition for ds 1997-01-02, 1997-01-05",
        "1 of 5 partition(s) failed validation",
    ]
    assert cfg.lake().table(RAW_TABLE).partitions() == ["1997-01-01", "1997-01-04"]
    assert [a["partition"] for a in alerts(cfg)] == [f"{RAW_TABLE}/ds=1997-01-03"]
