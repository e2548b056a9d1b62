"""The ``lockstep`` console entry point."""

import subprocess
import sys

from jobs.cli import main


def test_help_lists_the_jobs(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("demo", "ingest-cdnow", "generate", "snapshot", "show", "features"):
        assert command in out


def test_features_prints_fingerprints(capsys):
    from features import registry

    assert main(["features", "-v"]) == 0
    out = capsys.readouterr().out
    assert registry.get("customer_activity_v1").fingerprint in out and "recency_days" in out


def test_ingest_snapshot_show_round_trip(tmp_path, capsys):
    lake = str(tmp_path / "lake")
    assert main(["--lake", lake, "ingest-cdnow", "--from", "1997-01-01", "--to", "1997-01-10"]) == 0
    assert "raw_events/cdnow_purchases: 10 partitions" in capsys.readouterr().out
    # the raw days are not validated yet: the snapshot refuses them, naming the days and the command
    assert main(["--lake", lake, "snapshot", "--ds", "1997-01-09"]) == 1
    err = capsys.readouterr().err
    assert "table 'raw_events/cdnow_purchases' ds=1997-01-01..1997-01-09: not validated (run `lockstep validate" in err
    assert "--allow-unvalidated" in err
    validate = ["validate", "raw_events", "--source", "cdnow_purchases", "--ds", "1997-01-01", "--to", "1997-01-10"]
    assert main(["--lake", lake, *validate]) == 0
    assert main(["--lake", lake, "snapshot", "--ds", "1997-01-09", "--to", "1997-01-10"]) == 0
    assert main(["--lake", lake, "show", "feature_snapshots/customer_activity_v1"]) == 0
    out = capsys.readouterr().out
    assert "feature_snapshots/customer_activity_v1: 2 partitions 1997-01-09..1997-01-10" in out
    # --to is the one-pass range build: every day validated before it was published
    from jobs.config import Config

    snaps = Config(lake_root=lake).lake().table("feature_snapshots/customer_activity_v1")
    assert snaps.validated("1997-01-09") and snaps.validated("1997-01-10")


def test_relanding_a_validated_day_says_it_is_staged_until_validated(tmp_path, capsys):
    from jobs.lake import Lake

    lake = str(tmp_path / "lake")
    args = ["--lake", lake, "land", "--source", "cdnow_purchases", "--ds", "1997-01-01", "--to", "1997-01-02"]
    assert main(args) == 0
    assert "staged" not in capsys.readouterr().out  # first versions are published at once
    validate = ["--lake", lake, "validate", "raw_events", "--source", "cdnow_purchases", "--ds", "1997-01-02"]
    assert main(validate) == 0
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (
        "1 day(s) staged over their validated version, readers keep it until `lockstep validate` passes: 1997-01-02"
    )
    table = Lake(lake).table("raw_events/cdnow_purchases")
    staged = table.pending("1997-01-02")
    assert staged is not None and table.pending("1997-01-01") is None
    assert main(validate) == 0
    assert table.pending("1997-01-02") is None and table.manifest("1997-01-02") == staged.manifest


def test_job_errors_exit_1_with_a_message(tmp_path, capsys):
    assert main(["--lake", str(tmp_path), "snapshot", "--ds", "1997-01-05"]) == 1
    assert "no raw_events partitions" in capsys.readouterr().err


def test_bad_engine_is_rejected_at_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "--engine", "flink", "features"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2 and "invalid choice: 'flink'" in proc.stderr


def test_bad_engine_from_the_environment_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOCKSTEP_ENGINE", "flink")
    assert main(["--lake", str(tmp_path), "snapshot", "--ds", "1997-01-05"]) == 1
    assert "unknown engine 'flink'" in capsys.readouterr().err
