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
| `tune` | training sets: the train range (a stratified subsample) and the valid range, never the holdback | *skipped* unless Param `tune` is true; successive-halving search of LightGBM parameters on the Dask cluster (`lockstep tune`); report under `<lake>/_reports/tuning/`; the best parameters (XCom) go to `train_and_register` |
| `train_baseline` | training sets (train range on the Dask cluster, out of core) | the dask-ml linear baseline `<model>_baseline` (Param `baseline`, default on), registered through the same lineage gate |
| `train_and_register` | training sets | LightGBM (streamed from Parquet) with the tuned parameters if `tune` ran; scored against the baseline on validation (the floor); registered as `challenger` only with full lineage (the registry's gate refuses otherwise); the champion is scored on the same holdback |
| `promote` | the registry | `champion` alias moves to the challenger only if it beats the baseline on validation and the champion on the same holdback; otherwise the task is *skipped* and the champion kept. With no champion yet and LightGBM below the floor, the baseline it lost to becomes the first champion (a version of the model adopted from `<model>_baseline`), so scoring and serving have the better model |

**Params** (all optional): `train_from/train_to`, `valid_from/valid_to`, `holdback_from/holdback_to` (Monday
cut-offs); unset ones derive from the last mature cut-off (`*_weeks`, `embargo_days` = the 90-day label
horizon so training labels never overlap validation); `engine` (labels/training sets), `backend`
(LightGBM: streamed, memory, dask), `model_name`, `rounds`; `tune` (default off) with `tune_candidates`,
`tune_max_seconds`, `tune_max_rows`, `tune_seed`; `baseline` (default on).
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
        **{
            f"{r}_{e}": Param(None, **_DATE, title=f"{r} {e}")
            for r in ("train", "valid", "holdback")
            for e in ("from", "to")
        },
        "train_weeks": Param(o.TRAIN_WEEKS, type="integer", minimum=1),
        "valid_weeks": Param(o.VALID_WEEKS, type="integer", minimum=1),
        "holdback_weeks": Param(o.HOLDBACK_WEEKS, type="integer", minimum=1),
        "embargo_days": Param(o.HORIZON_DAYS, type="integer", minimum=0),
        "engine": Param(None, **o.engine_param_schema()),
        "backend": Param("streamed", type="string", enum=list(o.BACKENDS)),
        "model_name": Param("repurchase_90d", type="string", pattern=r"^[A-Za-z0-9_.-]+$"),
        "rounds": Param(200, type="integer", minimum=1, maximum=5000),
        "tune": Param(False, type="boolean", title="search LightGBM parameters before training"),
        "tune_candidates": Param(27, type="integer", minimum=1, maximum=500),
        "tune_max_seconds": Param(3600, type="integer", minimum=1),
        "tune_max_rows": Param(300_000, type="integer", minimum=1000),
        "tune_seed": Param(0, type="integer", minimum=0),
        "baseline": Param(True, type="boolean", title="train the dask-ml linear baseline (the promotion floor)"),
    },
    doc_md=DOC,
    tags=["lockstep", "training"],
)
def training():
    @task
    def plan_window(params=None, logical_date=None):
        from jobs.training.labels import latest_mature_cutoff

        return o.training_window(params, logical_date, latest_mature_cutoff(o.config().lake()))

    @task
    def build_labels(window: dict, params=None):
        from jobs.training.labels import build_labels

        return o.summary(build_labels(o.config(params["engine"]), window["cutoffs"]))

    @task
    def build_training_sets(window: dict, params=None):
        from jobs.training.training_set import build_training_sets

        return o.summary(
            build_training_sets(o.config(params["engine"]), window["cutoffs"], o.FEATURE_SET, validate=False)
        )

    @task
    def validate_training_sets(window: dict):
        from jobs.quality.validate import validate_partition

        with o.data_quality_gate():
            return [
                o.summary(validate_partition(o.config(), "training_sets", c, feature_set=o.FEATURE_SET, alert=False))
                for c in window["cutoffs"]
            ]

    def _spec(window: dict, params, tuned_params=None):
        from jobs.training.trainer import TrainSpec

        return TrainSpec(
            tuple(window["train"]),
            tuple(window["valid"]),
            tuple(window["holdback"]),
            model_name=params["model_name"],
            feature_set=o.FEATURE_SET,
            backend=params["backend"],
            num_boost_round=params["rounds"],
            embargo_days=window["embargo_days"],
            params=dict(tuned_params or {}),
        )

    @task
    def tune(window: dict, params=None):
        from airflow.sdk.exceptions import AirflowSkipException

        if not params.get("tune"):
            raise AirflowSkipException("tuning is off (Param tune=false): training uses the default parameters")
        from jobs.training.search import report_dir, write_report
        from jobs.training.search import tune as search

        cfg = o.config(params["engine"])
        result = search(
            cfg,
            _spec(window, params),
            n_candidates=params["tune_candidates"],
            max_seconds=params["tune_max_seconds"],
            max_rows=params["tune_max_rows"],
            seed=params["tune_seed"],
            progress=print,
        )
        paths = write_report(result, report_dir(cfg, params["model_name"], result.seed), cfg.storage_options or None)
        return {
            "params": {**result.best_params, "seed": result.seed},
            "best_valid_auc": result.best_auc,
            "configs_tried_on_validation": result.n_configs,
            "fits": result.n_fits,
            "stopped_early": result.stopped_early,
            "report": paths["summary.md"],
        }

    @task
    def train_baseline(window: dict, params=None):
        from airflow.sdk.exceptions import AirflowSkipException

        if not params.get("baseline"):
            raise AirflowSkipException("baseline off (Param baseline=false): no promotion floor this run")
        from jobs.training.baseline import train_baseline as fit

        out = fit(o.config(params["engine"]), _spec(window, params))
        return {
            "name": out.registered.name,
            "version": out.registered.version,
            "valid_auc": out.candidate.metrics["valid_auc"],
            "holdback_auc": out.candidate.metrics["holdback_auc"],
        }

    @task(trigger_rule="none_failed")  # runs when tune / train_baseline are skipped
    def train_and_register(window: dict, params=None, ti=None):
        from jobs.training.trainer import train_model

        tuned = ti.xcom_pull(task_ids="tune") if ti is not None else None
        spec = _spec(window, params, (tuned or {}).get("params"))
        extra_metrics, extra_reports = {}, {}
        if tuned:  # the registered model records the search that chose its parameters
            extra_metrics = {
                "valid_configs_tried": tuned["configs_tried_on_validation"],
                "valid_fits_tried": tuned["fits"],
            }
            extra_reports = {"tuning": tuned}
        out = train_model(o.config(params["engine"]), spec, extra_metrics=extra_metrics, extra_reports=extra_reports)
        return {
            "version": out.registered.version,
            "metrics": out.candidate.metrics,
            "champion_on_same_holdback": out.champion_eval,
            "baseline": (out.baseline or {}).get("summary"),
            "notes": out.notes,
            "tuning": tuned,
        }

    @task
    def promote(params=None):
        from airflow.sdk.exceptions import AirflowSkipException

        from jobs.models.registry import PromotionRefused, Registry

        registry = Registry.from_config(o.config())
        try:
            info = registry.promote(params["model_name"])
        except PromotionRefused as exc:
            # No champion yet and LightGBM is below the linear floor: the baseline is the better model.
            first = registry.baseline_as_first_champion(params["model_name"])
            if first is None:
                raise AirflowSkipException(f"champion kept: {exc}") from exc
            return {
                "champion": first.version,
                "flavor": first.flavor,
                "adopted_from": first.tags.get("lockstep.adopted_from"),
                "why": str(exc),
            }
        return {"champion": info.version, "flavor": info.flavor}

    window = plan_window()
    labels = build_labels(window)
    sets = build_training_sets(window)
    checked = validate_training_sets(window)
    tuned = tune(window)
    floor = train_baseline(window)
    trained = train_and_register(window)
    labels >> sets >> checked >> [tuned, floor] >> trained >> promote()


training()
