"""training__<model>: one DAG per declared model — labels -> point-in-time training sets -> validate ->
train + register -> promote if better (and an optional parameter search)."""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier


def doc(model) -> str:
    every, weekday = o.cadence(model)
    cut = "every day" if every == "day" else f"every {WEEKDAYS[weekday]}"
    cron = o.cron_of(model.schedule.training, model)
    when = f"`{cron}` (UTC)" if cron else "manual runs only"
    sets = ", ".join(f"`{fs.name}`" for fs in model.feature_sets)
    return f"""
### {o.training_dag_id(model.name)}

Generated from the model declaration `{model.name}`: {model.description.splitlines()[0] if model.description else ""}
Schedule {when}, and on demand (Trigger, with Params). Cut-offs: {cut}; label horizon
{o.label_horizon_days(model):g} days; feature sets joined point in time: {sets}.

| step | reads | writes |
|---|---|---|
| `plan_window` | Params, the run's logical date, the lake (which labels are mature) | the cut-off ranges (XCom) |
| `build_labels` | {", ".join(f"`{s.table}`" for s in model.sources)} | `{model.labels_table}/ds=<cutoff>` for every cut-off of the window |
| `build_training_sets` | `{model.labels_table}`, the feature sets' sources | `{model.training_table}/ds=<cutoff>` (features point in time, on the engine) |
| `validate_training_sets` | those partitions | Data Docs; fails fast (no retry) on bad data |
| `tune` | training sets: the train range (a stratified subsample) and the valid range, never the holdback | *skipped* unless Param `tune` is true; successive-halving search of LightGBM parameters on the Dask cluster (`lockstep tune`); report under `<lake>/_reports/tuning/`; the best parameters (XCom) go to `train_and_register` |
| `train_baseline` | training sets (train range on the Dask cluster, out of core) | the dask-ml linear baseline `{model.name}_baseline` (Param `baseline`, default on), registered through the same lineage gate |
| `train_and_register` | training sets | LightGBM (streamed from Parquet) with the tuned parameters if `tune` ran; scored against the baseline on validation (the floor); registered as `challenger` of `{model.name}` only with full lineage (the registry's gate refuses otherwise); the champion is scored on the same holdback |
| `promote` | the registry | `champion` alias moves to the challenger only if it beats the baseline on validation and the champion on the same holdback; otherwise the task is *skipped* and the champion kept. With no champion yet and LightGBM below the floor, the baseline it lost to becomes the first champion (a version of the model adopted from `{model.name}_baseline`), so scoring and serving have the better model |

**Params** (all optional; defaults from the declaration's `ranges`): `train_from/train_to`,
`valid_from/valid_to`, `holdback_from/holdback_to` (cut-offs); unset ones derive from the last mature
cut-off (`*_weeks`, `embargo_days` = the label horizon so training labels never overlap validation);
`engine` (labels/training sets), `backend` (LightGBM: streamed, memory, dask), `rounds`; `tune` (default
off) with `tune_candidates`, `tune_max_seconds`, `tune_max_rows`, `tune_seed`; `baseline` (default on).
Lake: `LOCKSTEP_LAKE`; registry: `LOCKSTEP_MLFLOW_TRACKING_URI` (default SQLite under the lake).
"""


WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DATE = {"type": ["null", "string"], "format": "date"}


def training_dag(model):
    name = model.name
    defaults = o.training_param_defaults(model)
    cron = o.cron_of(model.schedule.training, model)

    @dag(
        dag_id=o.training_dag_id(name),
        schedule=CronTriggerTimetable(cron, timezone="UTC") if cron else None,
        start_date=o.span_dates(o.model_source(model))[0],
        catchup=False,
        max_active_runs=1,
        default_args=o.default_args(on_failure_callback=AirflowNotifier()),
        params={
            **{
                f"{r}_{e}": Param(defaults[f"{r}_{e}"], **_DATE, title=f"{r} {e}")
                for r in ("train", "valid", "holdback")
                for e in ("from", "to")
            },
            "train_weeks": Param(defaults["train_weeks"], type="integer", minimum=1),
            "valid_weeks": Param(defaults["valid_weeks"], type="integer", minimum=1),
            "holdback_weeks": Param(defaults["holdback_weeks"], type="integer", minimum=1),
            "embargo_days": Param(defaults["embargo_days"], type="integer", minimum=0),
            "engine": Param(None, **o.engine_param_schema()),
            "backend": Param("streamed", type="string", enum=list(o.BACKENDS)),
            "rounds": Param(defaults["rounds"], type="integer", minimum=1, maximum=5000),
            "tune": Param(False, type="boolean", title="search LightGBM parameters before training"),
            "tune_candidates": Param(27, type="integer", minimum=1, maximum=500),
            "tune_max_seconds": Param(3600, type="integer", minimum=1),
            "tune_max_rows": Param(300_000, type="integer", minimum=1000),
            "tune_seed": Param(0, type="integer", minimum=0),
            "baseline": Param(True, type="boolean", title="train the dask-ml linear baseline (the promotion floor)"),
        },
        doc_md=doc(model),
        tags=["lockstep", "training", f"model:{name}"],
    )
    def training():
        @task
        def plan_window(params=None, logical_date=None):
            from jobs.training.labels import latest_mature_cutoff

            return o.training_window(model, params, logical_date, latest_mature_cutoff(o.config(), name))

        @task
        def build_labels(window: dict, params=None):
            from jobs.training.labels import build_labels

            with o.data_quality_gate():  # unvalidated raw days fail at once, not retried
                return o.summary(build_labels(o.config(params["engine"]), name, window["cutoffs"]))

        @task
        def build_training_sets(window: dict, params=None):
            from jobs.training.training_set import build_training_set_range

            # one engine pass per joined set for every cut-off of the window; validate_training_sets gates them
            cfg = o.config(params["engine"])
            with o.data_quality_gate():
                return o.summary(build_training_set_range(cfg, name, window["cutoffs"], validate=False))

        @task
        def validate_training_sets(window: dict):
            from jobs.quality.validate import validate_partition

            with o.data_quality_gate():
                return [
                    o.summary(validate_partition(o.config(), o.TRAINING_SETS, c, model=name, alert=False))
                    for c in window["cutoffs"]
                ]

        def _spec(window: dict, params, tuned_params=None):
            from jobs.training.trainer import TrainSpec

            return TrainSpec(
                tuple(window["train"]),
                tuple(window["valid"]),
                tuple(window["holdback"]),
                model_name=name,
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
            paths = write_report(result, report_dir(cfg, name, result.seed), cfg.storage_options or None)
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
            out = train_model(
                o.config(params["engine"]), spec, extra_metrics=extra_metrics, extra_reports=extra_reports
            )
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
                info = registry.promote(name)
            except PromotionRefused as exc:
                # No champion yet and LightGBM is below the linear floor: the baseline is the better model.
                first = registry.baseline_as_first_champion(name)
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

    return training()


REPO = o.repo()
DAGS = {o.training_dag_id(m.name): training_dag(m) for m in REPO.models.values()}
