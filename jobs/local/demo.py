"""``lockstep demo``: the real DAGs on a real (embedded) Airflow over a stretch of the CDNOW period.

Steps, all inside the project directory (``.lockstep/``):

1. an Airflow home ``.lockstep/airflow`` (SQLite, LocalExecutor, the repo's ``dags/``, the
   ``lockstep`` pool, login admin/admin);
2. the CDNOW history landed into ``raw_events`` in bulk — what months of ``features_daily`` runs would
   have landed, so the 90-day labels of the training DAG are mature;
3. the ``training`` DAG (``airflow dags test``, with a small window): labels, point-in-time
   training sets, validation, the dask-ml linear baseline, LightGBM, lineage-gated registration,
   promotion to champion (only if it beats the baseline on validation);
4. the scheduler, DAG processor and API server started; a **backfill** of ``features_daily``
   over ``days`` days created through the REST API (what the UI's Backfill dialog does); each
   validated snapshot emits an Asset event that triggers ``batch_scoring`` (champion + shadow
   challenger -> validation -> SQL table);
5. the services stopped;
6. the reference serving service (``uvicorn``, ``fresh`` mode, the champion) started on a free local
   port; a seeded day of CDNOW traffic (the last features day) replayed against it, every answer
   logged to its write-ahead log (``.lockstep/serving_wal``); the service stopped;
7. the ``skew_nightly`` DAG for that day (``airflow dags test``): the WAL's records published to
   ``serving_logs``, validated, compared with the offline recomputation -> ``skew_reports`` and the
   page ``<lake>/_reports/skew/ds=<day>.html``; where everything is, and how to open the UI, printed.

``python -m jobs.local.demo ui`` then runs ``airflow standalone`` on that home to look at the runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs import orchestration as o

#: The features backfill of the demo: the first days of June 1998 (the end of the CDNOW log).
DEMO_FEATURES_FROM = "1998-06-01"
DEMO_DAYS = 3
#: A small training window, so the demo stays within a few minutes on 2 cores.
DEMO_TRAINING_CONF = {"train_weeks": 3, "valid_weeks": 1, "holdback_weeks": 1, "rounds": 100}
#: Replayed serving traffic: this many requests (seeded) on the last features day, then skew_nightly for it.
DEMO_REQUESTS = 500
DEMO_SEED = 0
STEPS = 7


def home_dir(project: Path) -> Path:
    return project / ".lockstep" / "airflow"


def airflow_for(project: Path, lake: str, port: int | None = None):
    from jobs.local.airflow_local import AirflowLocal

    return AirflowLocal(home_dir(project), lake, port=port or 8080)


def _step(n: int, total: int, text: str, t0: float) -> None:
    print(f"[{n}/{total}] {text} ({time.perf_counter() - t0:.0f}s)", flush=True)


def _floor(cfg) -> str:
    """The champion's validation AUC against the linear baseline's (the promotion floor)."""
    from jobs.defaults import DEFAULT_MODEL
    from jobs.models.registry import CHAMPION, Registry

    registry = Registry.from_config(cfg)
    champion = registry.alias(DEFAULT_MODEL, CHAMPION)
    if champion is None:
        raise RuntimeError(f"the training DAG left no champion of {DEFAULT_MODEL}: nothing to score or serve")
    if champion.flavor != "lightgbm":
        lost = registry.alias(DEFAULT_MODEL, "challenger")
        lgbm = f"LightGBM {lost.metrics['valid_auc']:.4f} < " if lost is not None else ""
        return (
            f"champion: the linear baseline ({champion.tags.get('lockstep.adopted_from')}), validation AUC "
            f"{lgbm}baseline {champion.metrics['valid_auc']:.4f}: LightGBM was below the floor"
        )
    m = champion.metrics
    if "baseline_valid_auc" not in m:
        return f"champion: LightGBM, validation AUC {m['valid_auc']:.4f}; no baseline compared"
    return f"champion: LightGBM, validation AUC {m['valid_auc']:.4f} vs the linear baseline's {m['baseline_valid_auc']:.4f}"


def wal_dir(project: Path) -> Path:
    return project / ".lockstep" / "serving_wal"


class ServingProcess:
    """The reference service as a ``uvicorn`` subprocess on 127.0.0.1 (its own process group)."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path):
        self.env, self.port, self.log_path = env, port, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "jobs.serving.app:app_from_env",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the serving service exited ({self.proc.returncode}):\n"
                    f"{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the serving service was not healthy after {timeout}s (log: {self.log_path})")

    def metrics(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/metrics", timeout=10).json()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (uvicorn drains; the serving log flushes and fsyncs its WAL), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def serve_and_replay(project: Path, cfg, day: str, requests: int = DEMO_REQUESTS, seed: int = DEMO_SEED) -> dict:
    """Start the service (fresh mode, the registry's champion), replay ``requests`` seeded requests of ``day``,
    stop it; returns the status counts and the service's metrics."""
    from features import registry
    from jobs.local.airflow_local import free_port
    from jobs.serving.replay import plan_day, replay
    from jobs.serving.store import read_lake_events

    fs = registry.get(o.FEATURE_SET)
    env = {
        **os.environ,
        "LOCKSTEP_LAKE": cfg.lake_root,
        o.SERVING_WAL_ENV: str(wal_dir(project)),
        "LOCKSTEP_SERVING_MODE": "fresh",
        "LOCKSTEP_SERVING_FEATURE_SET": fs.name,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep),
    }
    plan = plan_day(read_lake_events(cfg, fs), day, requests, seed, fs.entity)
    svc = ServingProcess(env, free_port(), project / ".lockstep" / "serving.log")
    svc.start()
    try:
        res = replay(svc.url, plan, concurrency=4)
        metrics = svc.metrics()
    finally:
        svc.stop()
    return {
        "statuses": {int(k): int(v) for k, v in res["status"].value_counts().items()},
        "metrics": metrics,
        "requests": len(res),
    }


def run_demo(
    project: Path | str = ".",
    lake: str | None = None,
    ds_from: str = DEMO_FEATURES_FROM,
    days: int = DEMO_DAYS,
    training_conf: dict | None = None,
    timeout: float = 1800,
    requests: int = DEMO_REQUESTS,
) -> dict:
    """Run the demo; returns where its outputs are."""
    from jobs.config import Config
    from jobs.ingest.cdnow import ingest_cdnow
    from jobs.local.airflow_local import PASSWORD, USER, free_port

    project = Path(project).resolve()
    cfg = Config.from_env(lake_root=lake)
    lake_root = str(Path(cfg.lake_root).resolve()) if "://" not in cfg.lake_root else cfg.lake_root
    cfg = Config.from_env(lake_root=lake_root)
    t0 = time.perf_counter()
    last = (dt.date.fromisoformat(ds_from) + dt.timedelta(days=days - 1)).isoformat()
    problems: list[str] = []
    notes: list[str] = []

    af = airflow_for(project, lake_root, port=free_port())
    af.init()
    _step(1, STEPS, f"Airflow home {af.home} (SQLite, LocalExecutor, dags/ = {af.dags_folder})", t0)

    raw = ingest_cdnow(cfg.lake())
    _step(2, STEPS, f"raw_events: {len(raw)} CDNOW days landed ({raw[0].ds}..{raw[-1].ds})", t0)

    proc = af.dags_test("training", conf={**DEMO_TRAINING_CONF, **(training_conf or {})}, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the training DAG failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    _step(
        3,
        STEPS,
        "training DAG: labels -> training sets -> validated -> dask-ml baseline + LightGBM -> "
        f"registered -> champion ({_floor(cfg)})",
        t0,
    )

    af.start(("scheduler", "dag-processor", "api-server"))
    try:
        af.wait_until_up()
        for dag_id in ("features_daily", "batch_scoring"):
            af.wait_for_dag(dag_id)
        want = set(o.day_range(ds_from, last))
        predictions = cfg.lake().table(o.PREDICTIONS)
        before = {d: predictions.manifest(d).created_at for d in want if predictions.exists(d)}  # a re-run
        idle_since = time.monotonic()
        backfill = af.create_backfill("features_daily", ds_from, last, max_active_runs=2, reprocess="completed")
        deadline = time.monotonic() + timeout
        while not af.api("GET", f"backfills/{backfill['id']}").get("completed_at"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"features_daily backfill {ds_from}..{last} not done after {timeout}s")
            af.check_alive()
            time.sleep(3)
        failed = [r["logical_date"][:10] for r in af.dag_runs("features_daily") if r["state"] == "failed"]
        if failed:
            problems.append(f"features_daily failed for {failed}")
        _step(
            4,
            STEPS,
            f"features_daily backfill {ds_from}..{last}: {days} runs (ingest -> validate -> snapshot -> validate)",
            t0,
        )
        scored: set[str] = set()
        retried = False
        while not failed:
            # Asset events of several snapshot days may be merged into one batch_scoring run; a day's
            # predictions partition exists once it is scored and validated (a failure quarantines it).
            runs = af.dag_runs("batch_scoring")
            busy = any(r["state"] in ("queued", "running") for r in runs)
            scored = {
                d for d in want & set(predictions.partitions()) if predictions.manifest(d).created_at != before.get(d)
            }
            if not busy and (scored == want or any(r["state"] == "failed" for r in runs)):
                break
            if not busy and runs and not retried and time.monotonic() > idle_since + 60:
                # Airflow 3.3 on SQLite can drop an Asset event that lands while the scoring run it
                # would join is being created; score such days explicitly (a manual run with `ds`).
                for day in sorted(want - scored):
                    af.api("POST", "dags/batch_scoring/dagRuns", {"logical_date": None, "conf": {"ds": day}})
                    notes.append(f"batch_scoring for {day} triggered explicitly (its Asset event was not picked up)")
                retried = True
            if busy:
                idle_since = time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch_scoring has not scored {sorted(want - scored)} after {timeout}s")
            time.sleep(5)
        if any(r["state"] == "failed" for r in af.dag_runs("batch_scoring")):
            problems.append("a batch_scoring run failed")
        if want - scored:
            problems.append(f"batch_scoring did not score {sorted(want - scored)}")
        _step(
            5,
            STEPS,
            f"batch_scoring (triggered by the snapshot Asset): predictions for {len(scored & want)} of "
            f"{len(want)} days, published to SQL",
            t0,
        )
    finally:
        af.stop()

    # Serving: a day of traffic against the champion, logged; then the nightly skew job for that day.
    serve_day = last
    served = serve_and_replay(project, cfg, serve_day, requests)
    m = served["metrics"]
    _step(
        6,
        STEPS,
        f"serving: {served['requests']} requests of {serve_day} replayed (HTTP {served['statuses']}); "
        f"p50 {m.get('p50_ms') or 0:.1f} ms, p99 {m.get('p99_ms') or 0:.1f} ms; "
        f"{m.get('log_written')} records in the WAL {wal_dir(project)}",
        t0,
    )
    if set(served["statuses"]) != {200}:
        problems.append(f"serving answered {served['statuses']} (not all 200)")
    af.extra_env[o.SERVING_WAL_ENV] = str(wal_dir(project))
    proc = af.dags_test("skew_nightly", serve_day, check=False, timeout=timeout)
    from jobs.skew.causes import CAUSES

    skew_reports = cfg.lake().table(o.SKEW_REPORTS)
    if proc.returncode != 0 or not skew_reports.exists(serve_day):
        problems.append(
            f"skew_nightly failed for {serve_day} (a threshold breach or an error):\n"
            + _tail(proc.stdout + proc.stderr)
        )
        skew_text = "FAILED"
    else:
        rep = skew_reports.read(serve_day)
        counts = {c: int(rep[c].fillna(0).sum()) for c in CAUSES}
        skew_text = f"{int(rep['rows'].max())} logged rows, {len(rep) - 1} features; mismatches by cause {counts}"
    _step(7, STEPS, f"skew_nightly {serve_day}: serving log published -> validated -> skew report: {skew_text}", t0)
    out = outputs(project, cfg, sorted(want), USER, PASSWORD, skew_day=serve_day)
    out["problems"] = problems
    out["notes"] = notes
    return out


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def outputs(project: Path, cfg, days: list[str], user: str, password: str, skew_day: str | None = None) -> dict:
    from jobs.quality.gx import index_path
    from jobs.scoring.sql import sql_url

    lake = cfg.lake()
    return {
        "predictions_sql": sql_url(cfg),
        "predictions_lake": lake.table(o.PREDICTIONS).partition_path(days[-1]),
        "snapshots": lake.table(o.snapshot_table_name()).partition_path(days[-1]),
        "data_docs": index_path(lake),
        "alerts_log": lake.path("_alerts", "alerts.jsonl"),
        "registry": lake.path("_registry"),
        "airflow_home": str(home_dir(project)),
        "days": days,
        "login": f"{user} / {password}",
        "skew_day": skew_day,
        "serving_wal": str(wal_dir(project)),
        "serving_logs": lake.table(o.SERVING_LOGS).partition_path(skew_day) if skew_day else None,
        "skew_table": lake.table(o.SKEW_REPORTS).partition_path(skew_day) if skew_day else None,
        "skew_page": lake.path("_reports", "skew", f"ds={skew_day}.html") if skew_day else None,
    }


def print_outputs(out: dict) -> None:
    db = out["predictions_sql"].removeprefix("sqlite:///")
    print("\nOutputs")
    print(
        f"  prediction table   {out['predictions_sql']}  (table `predictions`, days {out['days'][0]}..{out['days'][-1]})"
    )
    print(f'                     sqlite3 {db} "select role, count(*), avg(score) from predictions group by role"')
    print(f"  predictions (lake) {out['predictions_lake']}")
    print(f"  feature snapshots  {out['snapshots']}")
    print(f"  Data Docs          {out['data_docs']}")
    if out.get("skew_day"):
        print(f"  serving WAL        {out['serving_wal']}")
        print(f"  serving log        {out['serving_logs']}")
        print(f"  skew report table  {out['skew_table']}")
        print(f"  skew report page   {out['skew_page']}  (open in a browser)")
    print(f"  alerts log         {out['alerts_log']}  (one JSON line per failure)")
    print(f"  model registry     {out['registry']}  (MLflow, SQLite)")
    print(f"  Airflow home       {out['airflow_home']}")
    print("\nAirflow UI (the runs above, backfills, the DAG docs):")
    print("  .venv/bin/python -m jobs.local.demo ui      # = airflow standalone on that home")
    print(f"  then open http://localhost:8080 and log in as {out['login']}")
    for note in out.get("notes", []):
        print(f"  note: {note}")
    for problem in out.get("problems", []):
        print(f"\nFAILED: {problem} — the alerts log and the Data Docs above say why; the UI shows the runs.")


def run_ui(project: Path | str = ".", lake: str | None = None, port: int = 8080) -> None:
    """Replace this process with ``airflow standalone`` on the demo's home (UI on ``port``)."""
    from jobs.config import Config
    from jobs.local.airflow_local import PASSWORD, USER

    project = Path(project).resolve()
    cfg = Config.from_env(lake_root=lake)
    af = airflow_for(project, str(Path(cfg.lake_root).resolve()), port=port)
    if not (af.home / "airflow.db").exists():
        af.init()
    env = af.env()
    print(f"Airflow UI on http://localhost:{port}  (login {USER} / {PASSWORD}); Ctrl-C stops it", flush=True)
    os.execve(str(af.bin / "airflow"), [str(af.bin / "airflow"), "standalone"], env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.local.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", nargs="?", choices=("run", "ui"), default="run")
    p.add_argument("--lake", help="lake root (env LOCKSTEP_LAKE; default ./.lockstep/lake)")
    p.add_argument("--from", dest="ds_from", default=DEMO_FEATURES_FROM, help="first features day")
    p.add_argument("--days", type=int, default=DEMO_DAYS, help="features days to backfill")
    p.add_argument("--port", type=int, default=8080, help="UI port (ui)")
    p.add_argument(
        "--requests",
        type=int,
        default=DEMO_REQUESTS,
        help="serving requests replayed on the last features day, before skew_nightly",
    )
    args = p.parse_args(argv)
    if args.command == "ui":
        run_ui(".", args.lake, args.port)
        return 0
    out = run_demo(".", args.lake, args.ds_from, args.days, requests=args.requests)
    print_outputs(out)
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
