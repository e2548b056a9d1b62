"""canary_ramp__<model>: one DAG per declared model — advance the challenger's canary one step of the
declared ramp, only while its guards hold (``jobs.serving.canary.advance_canary``)."""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag, task

from jobs import orchestration as o
from jobs.alerts import AirflowNotifier


def doc(model) -> str:
    ramp = model.ramp
    when = f"`{ramp.schedule}` (UTC)" if ramp.schedule else "manual runs only"
    steps = " -> ".join(f"{s:g}" for s in ramp.steps)
    return f"""
### {o.canary_dag_id(model.name)}

Generated from the model declaration `{model.name}` (its `ramp`). Schedule {when}, and on demand.
One task, `advance`: the registry's challenger of `{model.name}` moves to the next step of the ramp
({steps}) only when

1. no guard breach is recorded on the version (tag `lockstep.canary_breach`),
2. its current stage (tag `lockstep.canary_stage_at`, written with every share set) has lasted at least
   `min_stage_minutes` ({ramp.min_stage_minutes:g}), and
3. a serving process's guards judged the canary arm at the current share since the stage began and found
   no breach (tag `lockstep.canary_judged`, written by the service's guard monitor).

Otherwise the run holds and says why (`no challenger`, `breach`, `too early`, `not judged`, `not started`:
a canary at share 0 is started by command, `lockstep canary --next`; `complete`: at the last step) — a
hold is a success, its decision the task's return value (XCom). Only an error (registry unreachable)
fails the task, retried, then alerted. Registry: `LOCKSTEP_MLFLOW_TRACKING_URI` (default SQLite under
`LOCKSTEP_LAKE`). No catch-up: a missed hour is not replayed (one step per run at most anyway).
"""


def canary_ramp_dag(model):
    name = model.name

    @dag(
        dag_id=o.canary_dag_id(name),
        schedule=CronTriggerTimetable(model.ramp.schedule, timezone="UTC") if model.ramp.schedule else None,
        start_date=o.DEFAULT_START,
        catchup=False,
        max_active_runs=1,
        default_args=o.default_args(on_failure_callback=AirflowNotifier()),
        doc_md=doc(model),
        tags=["lockstep", "serving", "canary", f"model:{name}"],
    )
    def canary_ramp():
        @task
        def advance():
            from jobs.serving.canary import advance_canary

            decision = advance_canary(o.config(), o.repo().model(name))
            print(decision.describe())
            return decision.as_dict()

        advance()

    return canary_ramp()


REPO = o.repo()
DAGS = {o.canary_dag_id(m.name): canary_ramp_dag(m) for m in REPO.models.values()}
