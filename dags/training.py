"""training: labels -> point-in-time training sets -> validate -> train + register -> promote if better."""
from __future__ import annotations

import datetime as dt

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier

DOC = f"""
### training

Weekly (Mondays 00:00 UTC, inside the CDNOW period) and on demand (Trigger, with Params).

| step | reads | writes |
|---|---|---|
| `plan_window` | Params, the run's logical date, `raw_events` (which labels are mature) | the cut-off ranges (XCom) |
| `build_labels` | `raw_events` | `labels/ds=<cutoff>` for every Monday cut-off of the window |
| `build_training_sets` | `labels`, `raw_events` | `training_sets/{o.FEATURE_SET}/ds=<cutoff>` (features point in time, on the engine) |
| `validate_training_sets` | those partitions | Data Docs; fails fast (no retry) on bad data |
| `train_and_register` | training sets | LightGBM (streamed from Parquet); registered as `challenger` only with full lineage (the registry's gate refuses otherwise); the champion is scored on the same holdback |
| `promote` | the registry | `champion` alias moves to the challenger only if it wins on the same holdback; otherwise the task is *skipped* and the champion kept |

**Params** (all optional): `train_from/train_to`, `valid_from/valid_to`, `holdback_from/holdback_to` (Monday
cut-offs); unset ones derive from the last mature cut-off (`*_weeks`, `embargo_days` = the 90-day label
horizon so training labels never overlap validation); `engine` (labels/training sets), `backend`
(LightGBM: streamed, memory, dask), `model_name`, `rounds`.
Lake: `LOCKSTEP_LAKE`; registry: `LOCKSTEP_MLFLOW_TRACKING_URI` (default SQLite under the lake).
"""

_DATE = {"type": ["null", "string"], "format": "date"}


@dag(
    dag_id="training",
    schedule=CronTriggerTimetable("0 0 * * 1", timezone="UTC"),
    start_date=dt.datetime(1997, 12, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=o.default_args(on_failure_callback=AirflowNotifier()),
    params={
        **{f"{r}_{e}": Param(None, **_DATE, title=f"{r} {e}") for r in ("train", "valid", "holdback") for e in ("from", "to")},
        "train_weeks": Param(o.TRAIN_WEEKS, type="integer", minimum=1),
        "valid_weeks": Param(o.VALID_WEEKS, type="integer", minimum=1),
        "holdback_weeks": Param(o.HOLDBACK_WEEKS, type="integer", minimum=1),
        "embargo_days": Param(o.HORIZON_DAYS, type="integer", minimum=0),
        "engine": Param(None, **o.engine_param_schema()),
        "backend": Param("streamed", type="string", enum=list(o.BACKENDS)),
        "model_name": Param("repurchase_90d", type="string", pattern=r"^[A-Za-z0-9_.-]+$"),
        "rounds": Param(200, type="integer", minimum=1, maximum=5000),
    },
    doc_md=DOC,
    tags=["lockstep", "training"],
)
def training():
    @task
    def plan_window(params=None, logical_date=None):
        from jobs.labels import latest_mature_cutoff

        return o.training_window(params, logical_date, latest_mature_cutoff(o.config().lake()))

    @task
    def build_labels(window: dict, params=None):
        from jobs.labels import build_labels

        return o.summary(build_labels(o.config(params["engine"]), window["cutoffs"]))

    @task
    def build_training_sets(window: dict, params=None):
        from jobs.training_set import build_training_sets

        return o.summary(build_training_sets(o.config(params["engine"]), window["cutoffs"], o.FEATURE_SET,
                                             validate=False))

    @task
    def validate_training_sets(window: dict):
        from jobs.validate import validate_partition

        with o.data_quality_gate():
            return [o.summary(validate_partition(o.config(), "training_sets", c, feature_set=o.FEATURE_SET,
                                                 alert=False)) for c in window["cutoffs"]]

    @task
    def train_and_register(window: dict, params=None):
        from jobs.train import TrainSpec, train_model

        spec = TrainSpec(tuple(window["train"]), tuple(window["valid"]), tuple(window["holdback"]),
                         model_name=params["model_name"], feature_set=o.FEATURE_SET, backend=params["backend"],
                         num_boost_round=params["rounds"], embargo_days=window["embargo_days"])
        out = train_model(o.config(params["engine"]), spec)
        return {"version": out.registered.version, "metrics": out.candidate.metrics,
                "champion_on_same_holdback": out.champion_eval, "notes": out.notes}

    @task
    def promote(params=None):
        from airflow.sdk.exceptions import AirflowSkipException

        from jobs.registry import PromotionRefused, Registry

        try:
            info = Registry.from_config(o.config()).promote(params["model_name"])
        except PromotionRefused as exc:
            raise AirflowSkipException(f"champion kept: {exc}") from exc
        return {"champion": info.version}

    window = plan_window()
    labels = build_labels(window)
    sets = build_training_sets(window)
    checked = validate_training_sets(window)
    trained = train_and_register(window)
    labels >> sets >> checked >> trained >> promote()


training()
