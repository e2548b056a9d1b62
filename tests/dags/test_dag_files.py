"""Every DAG file parses fast and cleanly, and carries the platform's conventions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
#: The DAGs the CDNOW example's declarations produce: one per source, four per model.
FEATURES = "features_daily__cdnow_purchases"
TRAINING = "training__repurchase_90d"
SCORING = "batch_scoring__repurchase_90d"
SKEW = "skew_nightly__repurchase_90d"
CANARY = "canary_ramp__repurchase_90d"
EXPECTED = {FEATURES, TRAINING, SCORING, SKEW, CANARY}
SNAPSHOT_URI = "lockstep://feature_snapshots/customer_activity_v1"


@pytest.fixture(scope="module")
def dagbag():
    import airflow.sdk  # noqa: F401 - Airflow itself is loaded in the DAG processor before any file
    from airflow.dag_processing.dagbag import DagBag

    DagBag(dag_folder=str(DAGS), known_pools={"lockstep"})  # warm: the processor re-parses every few seconds
    return DagBag(dag_folder=str(DAGS), known_pools={"lockstep"})


def test_dag_files_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    from jobs import orchestration as o

    # one set per declaration, nothing else (the shipped repo may hold more examples than CDNOW)
    assert set(dagbag.dag_ids) == {d for ids in o.dag_ids(o.repo()).values() for d in ids} >= EXPECTED


def test_each_dag_file_parses_well_under_a_second(dagbag):
    slow = {s.file: s.duration.total_seconds() for s in dagbag.dagbag_stats if s.duration.total_seconds() > 1.0}
    assert not slow, f"DAG files too slow to parse (heavy imports or I/O at module level?): {slow}"


def test_parsing_a_dag_file_imports_no_heavy_module():
    # A fresh interpreter: what does importing every DAG file pull in besides Airflow?
    code = (
        "import sys, runpy, glob\n"
        f"for f in sorted(glob.glob({str(DAGS)!r} + '/*.py')): runpy.run_path(f)\n"
        "heavy = [m for m in ('pandas', 'pyarrow', 'pyspark', 'dask', 'lightgbm', 'great_expectations', "
        "'jobs.lake', 'jobs.config') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    heavy = set(filter(None, out.stdout.strip().split(",")))
    heavy -= {"pandas"}  # Airflow itself may import pandas lazily in some providers; the others must not appear
    assert heavy == set(), f"DAG files import heavy modules at parse time: {heavy}"


def test_ruff_airflow_rules_are_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "AIR", str(DAGS)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_conventions(dagbag, dag_id):
    from jobs import orchestration as o

    dag = dagbag.dags[dag_id]
    assert dag.doc_md and len(dag.doc_md) > 200, "doc_md explains inputs and outputs"
    assert dag.max_active_runs <= 4
    assert not dag.catchup, "backfills are explicit"
    assert "lockstep" in dag.tags
    for t in dag.tasks:
        assert t.pool == o.POOL, f"{t.task_id} outside the lockstep pool"
        assert t.on_failure_callback, f"{t.task_id} has no failure alert"
        assert t.retries >= 1 and t.retry_delay.total_seconds() >= 10


def test_features_daily_schedule_is_inside_cdnow(dagbag):
    dag = dagbag.dags[FEATURES]
    assert str(dag.start_date.date()) == "1997-01-01" and str(dag.end_date.date()) == "1998-06-30"
    assert [t.task_id for t in dag.topological_sort()] == [
        "land_raw",
        "validate_raw",
        "build_snapshot__customer_activity_v1",
        "validate_snapshot__customer_activity_v1",
    ]
    assert dag.get_task("validate_snapshot__customer_activity_v1").outlets[0].uri == SNAPSHOT_URI
    assert dag.get_task("validate_raw").outlets[0].uri == "lockstep://raw_events/cdnow_purchases"
    # Snapshots read every earlier raw day: days are built in order, a bad day stops the later ones.
    assert dag.get_task("build_snapshot__customer_activity_v1").depends_on_past
    assert "depends_on_past" in dag.doc_md


def test_batch_scoring_runs_on_the_snapshot_asset(dagbag):
    from jobs import orchestration as o

    dag = dagbag.dags[SCORING]
    uris = {a.uri for a in dag.timetable.asset_condition.objects}
    assert uris == {SNAPSHOT_URI}
    assert (
        [a.uri for a in dag.get_task("publish_sql").outlets]
        == ["lockstep://predictions/"]
        == [o.asset_uri("predictions")]
    )
    assert [t.task_id for t in dag.topological_sort()] == ["partitions", "score", "validate_predictions", "publish_sql"]


def test_training_flow_and_params(dagbag):
    dag = dagbag.dags[TRAINING]
    assert dag.timetable.expression == "0 0 * * 1"  # @weekly on the model's Monday cut-offs
    assert [t.task_id for t in dag.topological_sort()] == [
        "plan_window",
        "build_labels",
        "build_training_sets",
        "validate_training_sets",
        "tune",
        "train_baseline",
        "train_and_register",
        "promote",
    ]
    assert dag.params.get_param("backend").resolve("dask") == "dask"
    assert dag.params.get_param("tune").resolve() is False  # off unless asked for
    assert dag.get_task("train_and_register").trigger_rule == "none_failed"  # runs when tune is skipped
    assert dag.params.get_param("baseline").resolve() is True  # the promotion floor is on by default
    assert {"tune", "train_baseline"} <= set(dag.get_task("train_and_register").upstream_task_ids)
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.params.get_param("backend").resolve("gpu")
    # defaults from the declaration: its ranges (weeks of cut-offs), its label horizon, its rounds
    defaults = {k: dag.params[k] for k in ("train_weeks", "valid_weeks", "holdback_weeks", "embargo_days", "rounds")}
    assert defaults == {"train_weeks": 8, "valid_weeks": 3, "holdback_weeks": 3, "embargo_days": 90, "rounds": 500}


def test_every_dag_file_is_covered(dagbag):
    # each file generates the DAGs of its name, one per declaration
    assert {p.stem for p in DAGS.glob("*.py")} == {
        "features_daily",
        "training",
        "batch_scoring",
        "skew_nightly",
        "canary_ramp",
    }
    for dag_id in dagbag.dag_ids:
        assert Path(dagbag.dags[dag_id].fileloc).stem == dag_id.split("__")[0]


def test_skew_nightly_publishes_validates_then_reports(dagbag):
    dag = dagbag.dags[SKEW]
    assert str(dag.start_date.date()) == "1997-01-01" and str(dag.end_date.date()) == "1998-06-30"
    assert dag.timetable.expression == "0 0 * * *"  # @daily
    assert [t.task_id for t in dag.topological_sort()] == ["publish_serving_log", "validate_serving_log", "skew"]
    assert [a.uri for a in dag.get_task("skew").outlets] == ["lockstep://skew_reports/"]
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.params.get_param("lookback_days").resolve(-1)
    assert dag.params.get_param("thresholds").resolve({"*": {"psi": 0.25}}) == {"*": {"psi": 0.25}}


@pytest.mark.parametrize("dag_id", [FEATURES, TRAINING, SKEW])
def test_a_bad_engine_name_is_refused_at_trigger_time(dagbag, dag_id):
    from airflow.sdk.exceptions import ParamValidationError

    engine = dagbag.dags[dag_id].params.get_param("engine")
    with pytest.raises(ParamValidationError, match="flink"):
        engine.resolve("flink")
    assert engine.resolve("dask") == "dask"
    assert engine.resolve(None) is None  # empty: the configured engine (LOCKSTEP_ENGINE, else local)


def test_training_tune_task_is_skipped_unless_asked_and_feeds_train_and_register(dagbag, monkeypatch):
    """The ``tune`` and ``train_and_register`` callables, with the jobs replaced by stand-ins."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException

    import jobs.training.search as tune_mod
    import jobs.training.trainer

    dag = dagbag.dags[TRAINING]
    window = {
        "train": ["1997-02-03", "1997-02-24"],
        "valid": ["1997-03-03", "1997-03-10"],
        "holdback": ["1997-03-17", "1997-03-31"],
        "embargo_days": 0,
    }
    params = {**{k: dag.params[k] for k in dag.params.keys()}, "engine": None}  # noqa: SIM118 - a ParamsDict
    with pytest.raises(AirflowSkipException, match="tuning is off"):
        dag.get_task("tune").python_callable(window, params=params)

    best = {"num_leaves": 7, "learning_rate": 0.1}
    result = SimpleNamespace(best_params=best, seed=3, best_auc=0.7, n_configs=5, n_fits=8, stopped_early=None)
    seen = {}

    def fake_tune(cfg, spec, **kw):
        seen["tune"] = (spec, kw)
        return result

    monkeypatch.setattr(tune_mod, "tune", fake_tune)
    monkeypatch.setattr(tune_mod, "write_report", lambda *a, **k: {"summary.md": "/lake/_reports/x/summary.md"})
    tuned = dag.get_task("tune").python_callable(window, params={**params, "tune": True, "tune_seed": 3})
    assert tuned["params"] == {**best, "seed": 3} and tuned["configs_tried_on_validation"] == 5
    assert seen["tune"][1]["seed"] == 3 and seen["tune"][0].holdback == ("1997-03-17", "1997-03-31")

    def fake_train(cfg, spec, *a, **k):
        seen.setdefault("specs", []).append(spec)
        seen.setdefault("extra", []).append((k.get("extra_metrics"), k.get("extra_reports")))
        return SimpleNamespace(
            registered=SimpleNamespace(version=1),
            candidate=SimpleNamespace(metrics={}),
            champion_eval=None,
            notes=[],
            baseline=None,
        )

    monkeypatch.setattr(jobs.training.trainer, "train_model", fake_train)
    train = dag.get_task("train_and_register").python_callable
    train(window, params=params, ti=SimpleNamespace(xcom_pull=lambda task_ids: tuned))
    train(window, params=params, ti=SimpleNamespace(xcom_pull=lambda task_ids: None))  # tune skipped
    assert seen["specs"][0].params == {**best, "seed": 3} and seen["specs"][1].params == {}
    # the registered model records the search that chose its parameters (and nothing when none ran)
    assert seen["extra"][0][0]["valid_configs_tried"] == 5 and seen["extra"][0][1]["tuning"] == tuned
    assert seen["extra"][1] == ({}, {})


def test_canary_ramp_runs_on_the_declared_schedule(dagbag):
    from jobs import orchestration as o

    dag = dagbag.dags[CANARY]
    model = o.repo().model("repurchase_90d")
    assert model.ramp.schedule == "@hourly" and dag.timetable.expression == "0 * * * *"
    assert [t.task_id for t in dag.tasks] == ["advance"] and dag.max_active_runs == 1
    assert "min_stage_minutes" in dag.doc_md and "0.01 -> 0.05 -> 0.25 -> 1" in dag.doc_md
