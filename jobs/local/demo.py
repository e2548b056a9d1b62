"""``lockstep demo``: the real DAGs, generated from the declarations, on a real (embedded) Airflow over a
stretch of each model's data — every model of the repo, the default one first (the shipped repo
``features.projects`` declares two models: one on one source and one set, and one on
three sources and three sets), or one with ``--model``. The demo's
days come from the declarations: the sources' ``span``. Per model:

1. an Airflow home ``.lockstep/airflow`` (SQLite, LocalExecutor, the repo's ``dags/``, the
   ``lockstep`` pool, login admin/admin);
2. the history of every source the model reads landed in bulk (its declared span) and the days the demo's
   stages read validated (:func:`validation_window`; all of them for a set with an unbounded window) — what
   months of ``features_daily__<source>`` runs would have landed and validated, so the labels of the
   training DAG are mature and its inputs validated;
3. the ``training__<model>`` DAG (``airflow dags test``, with a small window): labels, point-in-time
   training sets, validation, the dask-ml linear baseline, LightGBM, lineage-gated registration,
   promotion to champion (only if it beats the baseline on validation);
4. the scheduler, DAG processor and API server started; a **backfill** of ``features_daily__<source>``
   for every source the model reads, all at once, over ``days`` days (from the first day of the span's last month) created through the REST API (what
   the UI's Backfill dialog does; its Param ``range_days`` = ``days``, so the first run's range build stops at
   the backfill's last day); each validated snapshot emits an Asset event that triggers
   ``batch_scoring__<model>`` (champion + shadow challenger -> validation -> SQL table);
5. the services stopped;
6. the reference serving service (``uvicorn``, ``fresh`` mode, the champion) started on a free local
   port; a seeded day of traffic (the last features day) replayed against it, every answer
   logged to its write-ahead log (``.lockstep/serving_wal/<model>``); the service stopped;
7. the ``skew_nightly__<model>`` DAG for that day (``airflow dags test``): the WAL's records published to
   ``serving_logs/<model>``, validated, compared with the offline recomputation ->
   ``skew_reports/<model>`` and the page ``<lake>/_reports/skew/<model>/ds=<day>.html``; where
   everything is, and how to open the UI, printed.

Everything is inside the project directory (``.lockstep/``); the models share one lake and one Airflow home.

``python -m jobs.local.demo ui`` then runs ``airflow standalone`` on that home to look at the runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs import orchestration as o

#: The features backfill of the demo: this many days from the first day of the source's last month (for
#: the CDNOW example, the first days of June 1998: the end of the log).
DEMO_DAYS = 3
#: A small training window, so the demo stays within a few minutes on 2 cores.
DEMO_TRAINING_CONF = {"train_weeks": 3, "valid_weeks": 1, "holdback_weeks": 1, "rounds": 100}
#: ... for a model with a labels partition every day (query rows, not weekly snapshots): two weeks of daily
#: cut-offs to train on, then a week each of validation and holdback.
DEMO_DAILY_TRAINING_CONF = {"train_weeks": 2, "valid_weeks": 1, "holdback_weeks": 1, "rounds": 100}
#: Replayed serving traffic: this many requests (seeded) on the last features day, then skew_nightly for it.
DEMO_REQUESTS = 500
DEMO_SEED = 0
STEPS = 7


def home_dir(project: Path) -> Path:
    return project / ".lockstep" / "airflow"


def airflow_for(project: Path, lake: str, port: int | None = None):
    from jobs.local.airflow_local import AirflowLocal

    return AirflowLocal(home_dir(project), lake, port=port or 8080)


def training_conf_for(model, latest_mature: str | None = None, before: str | None = None) -> dict:
    """The demo's training Params of ``model``: a short window of its own cut-offs (3/1/1 weeks of weekly
    cut-offs, 2/1/1 weeks of daily ones). A model declaring fixed ranges (e.g. the whole
    year) gets explicit dates instead — the window of those weeks ending at ``latest_mature`` (what the
    lake holds), and before ``before`` (the first features day: the demo trains on the past of the days
    it scores) — since explicit ranges win over weeks in the training DAG."""
    import dataclasses

    from features.model import EntitySnapshots

    q = model.queries
    weekly = isinstance(q, EntitySnapshots) and q.every == "week"
    conf = dict(DEMO_TRAINING_CONF if weekly else DEMO_DAILY_TRAINING_CONF)
    r = model.ranges
    if r.train is None and r.valid is None and r.holdback is None:
        return conf
    bounds = [
        d
        for d in (latest_mature, (dt.date.fromisoformat(before) - dt.timedelta(days=1)).isoformat() if before else None)
        if d
    ]
    weeks = {f"{k}_weeks": conf[f"{k}_weeks"] for k in ("train", "valid", "holdback")}
    unfixed = dataclasses.replace(model, ranges=dataclasses.replace(r, train=None, valid=None, holdback=None, **weeks))
    window = o.training_window(unfixed, {}, None, min(bounds) if bounds else None)
    for role in ("train", "valid", "holdback"):
        conf[f"{role}_from"], conf[f"{role}_to"] = window[role]
    return conf


def demo_models(cfg, model: str | None = None) -> list:
    """The models ``lockstep demo`` runs: the named one, else every model of the repo, the default first."""
    if model:
        return [demo_model(cfg, model)]
    repo = cfg.repo()
    first = repo.default_model()
    return [first, *(m for name, m in sorted(repo.models.items()) if name != first.name)]


def features_dags(model) -> list[str]:
    """The ``features_daily__<source>`` DAGs a model's demo backfills: its query source's first, then every
    other source it reads (the scoring DAG waits for the snapshots of all its feature sets)."""
    names = [o.model_source(model).name] + [s.name for s in model.sources]
    return [o.features_dag_id(n) for n in dict.fromkeys(names)]


def _step(n: int, total: int, text: str, t0: float) -> None:
    print(f"[{n}/{total}] {text} ({time.perf_counter() - t0:.0f}s)", flush=True)


def demo_model(cfg, model: str | None = None):
    """The declared model the demo runs (default: the repo's default model)."""
    repo = cfg.repo()
    return repo.model(model) if model else repo.default_model()


def features_window(source, ds_from: str | None = None, days: int = DEMO_DAYS) -> tuple[str, str]:
    """The demo's features backfill: ``days`` days from ``ds_from``, by default from the first day of the
    last month of the source's declared span."""
    if ds_from is None:
        if not source.span:
            raise ValueError(f"source {source.name!r} declares no span: pass the demo's first features day (--from)")
        ds_from = dt.date.fromisoformat(source.span[1]).replace(day=1).isoformat()
    last = (dt.date.fromisoformat(ds_from) + dt.timedelta(days=days - 1)).isoformat()
    return ds_from, last


def land_history(cfg, model, validate_through: str | None = None) -> list:
    """Every source the model reads, landed over its declared span and validated (through
    ``validate_through``, default: the whole span) — what the daily DAGs would have landed and validated:
    labels, training sets and snapshots refuse raw days that are not validated."""
    out = land_sources(cfg, model)
    validate_sources(cfg, model, None, validate_through)
    return out


def validate_sources(cfg, model, first: str | None, through: str | None) -> int:
    """Validate every source the model reads over ``first..through`` clipped to its declared span (None:
    the span's end), in :data:`DEMO_WORKERS` processes; returns how many days were validated."""
    from jobs.quality.validate import validate_range

    checked = 0
    for s in model.sources:
        lo, hi = max(s.span[0], first or s.span[0]), min(s.span[1], through or s.span[1])
        if hi >= lo:
            checked += len(
                validate_range(cfg, "raw_events", lo, hi, source=s.name, alert=False, docs=False, workers=DEMO_WORKERS)
            )
    return checked


def land_sources(cfg, model) -> list:
    """Every source the model reads, landed over its declared span (not validated)."""
    from jobs.ingest.landing import land

    out = []
    for source in model.sources:
        if not source.span:
            raise ValueError(f"source {source.name!r} declares no span: the demo cannot tell which days to land")
        out += land(cfg, source.name, *source.span)
    return out


#: Processes validating the history (the machine is otherwise idle then; 2 cores).
DEMO_WORKERS = 2
#: Days validated after the demo's last features day: what the skew job's late-data window (``late_days``,
#: 3 by default) reads past it. The features backfill's first run also builds these days' snapshots (it
#: builds every landed and validated day whose snapshot is missing), so the tail stays this short.
DEMO_TAIL_DAYS = 3


def validation_window(model, cutoffs: list[str], last_features_day: str) -> tuple[str | None, str]:
    """The raw days the demo's pipeline reads, ``(first, last)``: from the first training cut-off's
    look-back (the longest window of the model's sets, one day more, and the labels' own reads, e.g. a
    timetable published ``lead_days`` ahead) — ``None`` when a set reads all history — through the last
    cut-off's labels' reads or :data:`DEMO_TAIL_DAYS` after the last features day, whichever is later.
    The demo validates these days of its sources (``first`` None: from the span's first): no stage of
    the demo reads the others, and validating a year of three sources costs minutes."""
    first_cutoff = min(cutoffs)
    tail = (dt.date.fromisoformat(last_features_day) + dt.timedelta(days=DEMO_TAIL_DAYS)).isoformat()
    last = max([tail, *(hi for _, hi in model.label_reads(max(cutoffs)).values())])
    horizons = [fs.horizon_days for fs in model.feature_sets]
    if any(h is None for h in horizons):
        return None, last
    cutoff = dt.date.fromisoformat(first_cutoff)
    firsts = [(cutoff - dt.timedelta(days=math.ceil(max(horizons, default=0.0)) + 1)).isoformat()]
    firsts += [lo for lo, _ in model.label_reads(first_cutoff).values()]
    return min(firsts), last


def _floor(cfg, model: str) -> str:
    """The champion's validation AUC against the linear baseline's (the promotion floor)."""
    from jobs.models.registry import CHAMPION, Registry

    registry = Registry.from_config(cfg)
    champion = registry.alias(model, CHAMPION)
    if champion is None:
        raise RuntimeError(f"the training DAG left no champion of {model}: nothing to score or serve")
    if champion.flavor != "lightgbm":
        lost = registry.alias(model, "challenger")
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

        return httpx.get(f"{self.url}/metrics.json", timeout=10).json()

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


def serve_and_replay(project: Path, cfg, model, day: str, requests: int = DEMO_REQUESTS, seed: int = DEMO_SEED) -> dict:
    """Start the service (fresh mode, the registry's champion of ``model``), replay ``requests`` seeded
    requests of ``day``, stop it; returns the status counts and the service's metrics."""
    from jobs.local.airflow_local import free_port
    from jobs.serving.replay import plan_day, replay
    from jobs.serving.store import read_lake_events

    query_source = model.queries.source
    fs = next((f for f in model.feature_sets if f.source.name == query_source.name), None)
    if fs is not None:
        events = read_lake_events(cfg, fs)
    else:  # the queries come from a source no set reads (e.g. a timetable): its raw rows
        raw = cfg.lake().table(query_source.table)
        events = raw.read(raw.first_ds(), raw.last_ds())
    env = {
        **os.environ,
        "LOCKSTEP_LAKE": cfg.lake_root,
        o.SERVING_WAL_ENV: str(wal_dir(project)),
        "LOCKSTEP_SERVING_MODE": "fresh",
        "LOCKSTEP_SERVING_MODEL": model.name,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep),
    }
    plan = plan_day(events, day, requests, seed, model)
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


def announced_events(af, model) -> dict[str, list[dict]]:
    """``{snapshot table: its Asset events}`` (REST API) of every set ``model`` joins: what a scoring run reads."""
    tables = {o.asset_uri(o.snapshot_table_name(fs.name)): o.snapshot_table_name(fs.name) for fs in model.feature_sets}
    assets = af.api("GET", "assets", params={"uri_pattern": "feature_snapshots", "limit": 1000})["assets"]
    out: dict[str, list[dict]] = {t: [] for t in tables.values()}
    for asset in assets:
        if asset["uri"] in tables:
            params = {"asset_id": asset["id"], "limit": 1000}
            out[tables[asset["uri"]]] = af.api("GET", "assets/events", params=params)["asset_events"]
    return out


def run_demo(
    project: Path | str = ".",
    lake: str | None = None,
    ds_from: str | None = None,
    days: int = DEMO_DAYS,
    training_conf: dict | None = None,
    timeout: float = 1800,
    requests: int = DEMO_REQUESTS,
    model: str | None = None,
    serve: bool = True,
) -> dict:
    """Run the demo on the DAGs of ``model`` (default: the repo's default model) and of the sources it
    reads; returns where its outputs are. ``serve=False`` skips steps 6-7 (serving and the skew DAG)."""
    from jobs.config import Config
    from jobs.local.airflow_local import PASSWORD, USER, free_port

    project = Path(project).resolve()
    cfg = Config.from_env(lake_root=lake)
    lake_root = str(Path(cfg.lake_root).resolve()) if "://" not in cfg.lake_root else cfg.lake_root
    cfg = Config.from_env(lake_root=lake_root)
    decl = demo_model(cfg, model)
    source = o.model_source(decl)
    training_dag = o.training_dag_id(decl.name)
    backfilled = features_dags(decl)
    scoring_dag, skew_dag = o.scoring_dag_id(decl.name), o.skew_dag_id(decl.name)
    t0 = time.perf_counter()
    ds_from, last = features_window(source, ds_from, days)
    problems: list[str] = []
    notes: list[str] = []

    af = airflow_for(project, lake_root, port=free_port())
    af.init()
    _step(1, STEPS, f"Airflow home {af.home} (SQLite, LocalExecutor, dags/ = {af.dags_folder})", t0)

    from jobs.training.labels import latest_mature_cutoff

    # A model whose sets read bounded windows reads only the raw days around its cut-offs and features
    # days (``jobs.engines.join.history_start``): those are validated; the rest of the span is landed only
    # (a year of three sources would be minutes of validation no stage of the demo reads).
    raw = land_sources(cfg, decl)
    latest = latest_mature_cutoff(cfg, decl)
    conf = {**training_conf_for(decl, latest, before=ds_from), **(training_conf or {})}
    before = (dt.date.fromisoformat(ds_from) - dt.timedelta(days=1)).isoformat()
    window = o.training_window(decl, conf, None, min(d for d in (latest, before) if d))
    first, through = validation_window(decl, window["cutoffs"], last)
    checked = validate_sources(cfg, decl, first, through)
    tables = sorted({m.table for m in raw})
    _step(
        2,
        STEPS,
        f"{', '.join(tables)}: {len(raw)} days landed ({raw[0].ds}..{raw[-1].ds}), the {checked} the demo reads "
        f"validated ({first or 'from the first'}..{through})",
        t0,
    )

    proc = af.dags_test(training_dag, conf=conf, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{training_dag} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    _step(
        3,
        STEPS,
        f"{training_dag}: labels -> training sets -> validated -> dask-ml baseline + LightGBM -> "
        f"registered -> champion ({_floor(cfg, decl.name)})",
        t0,
    )

    af.start(("scheduler", "dag-processor", "api-server"))
    try:
        af.wait_until_up()
        for dag_id in (*backfilled, scoring_dag):
            af.wait_for_dag(dag_id)
        want = set(o.day_range(ds_from, last))
        deadline = time.monotonic() + timeout
        # one backfill per source DAG, all at once (the scheduler interleaves their runs)
        backfills = {
            dag_id: af.create_backfill(
                dag_id, ds_from, last, conf={"range_days": days}, max_active_runs=2, reprocess="completed"
            )
            for dag_id in backfilled
        }
        for dag_id, backfill in backfills.items():
            while not af.api("GET", f"backfills/{backfill['id']}").get("completed_at"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{dag_id} backfill {ds_from}..{last} not done after {timeout}s")
                af.check_alive()
                time.sleep(3)
        for dag_id in backfilled:
            failed = [r["logical_date"][:10] for r in af.dag_runs(dag_id) if r["state"] == "failed"]
            if failed:
                problems.append(f"{dag_id} failed for {failed}")
        _step(
            4,
            STEPS,
            f"{', '.join(backfilled)} backfill {ds_from}..{last}: {days} runs each "
            "(land -> validate -> snapshot -> validate)",
            t0,
        )
        # Each run scores every day due (announced by a snapshot Asset event, every set's snapshot
        # validated, no validated predictions built from it yet), so the Asset events Airflow 3.3 hands
        # to no run are scored too: wait until no run is queued or running and no day is due.
        scored: set[str] = set()
        stuck_since = None
        while True:
            runs = af.dag_runs(scoring_dag)
            busy = any(r["state"] in ("queued", "running") for r in runs)
            states = o.scoring_states(cfg, decl, sorted(want), announced_events(af, decl))
            scored = {d for d, s in states.items() if s == o.SCORED}
            due = sorted(d for d, s in states.items() if s == o.DUE)
            if not busy and not due:
                break
            if busy or stuck_since is None:
                stuck_since = time.monotonic()
            elif time.monotonic() > stuck_since + 120:  # the scheduler had two minutes to start a run
                problems.append(f"{scoring_dag}: days {due} due, but no run was started for them")
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scoring_dag} has not scored {sorted(want - scored)} after {timeout}s")
            af.check_alive()
            time.sleep(5)
        if any(r["state"] == "failed" for r in af.dag_runs(scoring_dag)):
            problems.append(f"a {scoring_dag} run failed")
        if want - scored:
            left = {d: states[d] for d in sorted(want - scored)}
            problems.append(f"{scoring_dag} did not score {sorted(left)} ({left})")
        _step(
            5,
            STEPS,
            f"{scoring_dag} (triggered by the snapshot Assets): predictions for {len(scored & want)} of "
            f"{len(want)} days, published to SQL",
            t0,
        )
    finally:
        af.stop()

    if not serve:
        _step(6, STEPS, f"serving {decl.name}: skipped (serve=False)", t0)
        _step(7, STEPS, f"{skew_dag}: skipped (no serving log)", t0)
        out = outputs(project, cfg, decl, sorted(want), USER, PASSWORD)
        out.update(problems=problems, notes=notes + [f"serving and {skew_dag} skipped for {decl.name}"])
        return out
    # Serving: a day of traffic against the champion, logged; then the nightly skew job for that day.
    serve_day = last
    served = serve_and_replay(project, cfg, decl, serve_day, requests)
    m = served["metrics"]
    _step(
        6,
        STEPS,
        f"serving {decl.name}: {served['requests']} requests of {serve_day} replayed (HTTP {served['statuses']}); "
        f"p50 {m.get('p50_ms') or 0:.1f} ms, p99 {m.get('p99_ms') or 0:.1f} ms; "
        f"{m.get('log_written')} records in the WAL {wal_dir(project)}",
        t0,
    )
    if set(served["statuses"]) != {200}:
        problems.append(f"serving answered {served['statuses']} (not all 200)")
    af.extra_env[o.SERVING_WAL_ENV] = str(wal_dir(project))
    proc = af.dags_test(skew_dag, serve_day, check=False, timeout=timeout)
    from jobs.skew.causes import CAUSES, SCORE_ROW

    skew_reports = cfg.lake().table(decl.skew_report_table)
    if proc.returncode != 0 or not skew_reports.exists(serve_day):
        problems.append(
            f"{skew_dag} failed for {serve_day} (a threshold breach or an error):\n" + _tail(proc.stdout + proc.stderr)
        )
        skew_text = "FAILED"
    else:
        rep = skew_reports.read(serve_day)
        feats = rep[rep["feature"] != SCORE_ROW]
        counts = {c: int(feats[c].fillna(0).sum()) for c in CAUSES}
        skew_text = (
            f"{int(rep['rows'].max())} logged rows, {len(rep) - 1} features; skew mismatches (vs training) "
            f"{int(feats['mismatches'].fillna(0).sum())}; differences by cause {counts} (late_data under known_at "
            "training is freshness, not skew)"
        )
    _step(7, STEPS, f"{skew_dag} {serve_day}: serving log published -> validated -> skew report: {skew_text}", t0)
    out = outputs(project, cfg, decl, sorted(want), USER, PASSWORD, skew_day=serve_day)
    out["problems"] = problems
    out["notes"] = notes
    return out


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def outputs(project: Path, cfg, model, days: list[str], user: str, password: str, skew_day: str | None = None) -> dict:
    from jobs.quality.gx import index_path
    from jobs.scoring.sql import sql_url
    from jobs.serving.log import model_wal_dir

    lake = cfg.lake()
    return {
        "model": model.name,
        "dags": [*features_dags(model), *o.dag_ids(cfg.repo())[f"model:{model.name}"]],
        "predictions_sql": sql_url(cfg),
        "sql_table": model.sql_table_name,
        "predictions_lake": lake.table(model.predictions_table).partition_path(days[-1]),
        "snapshots": [lake.table(o.snapshot_table_name(fs.name)).partition_path(days[-1]) for fs in model.feature_sets],
        "data_docs": index_path(lake),
        "alerts_log": lake.path("_alerts", "alerts.jsonl"),
        "registry": lake.path("_registry"),
        "airflow_home": str(home_dir(project)),
        "days": days,
        "login": f"{user} / {password}",
        "skew_day": skew_day,
        "serving_wal": str(model_wal_dir(wal_dir(project), model)),
        "serving_logs": lake.table(model.serving_log_table).partition_path(skew_day) if skew_day else None,
        "skew_table": lake.table(model.skew_report_table).partition_path(skew_day) if skew_day else None,
        "skew_page": lake.path("_reports", "skew", model.name, f"ds={skew_day}.html") if skew_day else None,
    }


def print_outputs(out: dict) -> None:
    db = out["predictions_sql"].removeprefix("sqlite:///")
    table = out["sql_table"]
    print(f"\nOutputs of model {out['model']} (DAGs {', '.join(out['dags'])})")
    print(f"  prediction table   {out['predictions_sql']}  (table `{table}`, days {out['days'][0]}..{out['days'][-1]})")
    print(f'                     sqlite3 {db} "select role, count(*), avg(score) from {table} group by role"')
    print(f"  predictions (lake) {out['predictions_lake']}")
    for path in out["snapshots"]:
        print(f"  feature snapshots  {path}")
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
    p.add_argument("--model", help="one declared model (default: every model, the repo's default first)")
    p.add_argument(
        "--from", dest="ds_from", help="first features day (default: the first day of the source span's last month)"
    )
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
    cfg = _config(args.lake)
    models = demo_models(cfg, args.model)
    outs = []
    for i, m in enumerate(models):
        print(f"\n=== demo of model {m.name} ({i + 1}/{len(models)})", flush=True)
        outs.append(run_demo(".", args.lake, args.ds_from, args.days, requests=args.requests, model=m.name))
    for out in outs:
        print_outputs(out)
        for note in out["notes"]:
            print(f"  note: {note}")
    return 1 if any(out["problems"] for out in outs) else 0


def _config(lake: str | None):
    from jobs.config import Config

    return Config.from_env(lake_root=lake)


if __name__ == "__main__":
    sys.exit(main())
