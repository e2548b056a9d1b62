"""A self-contained Airflow installation in one directory: SQLite metadata, LocalExecutor, the repo's
``dags/``, the Lockstep pool, and a known login. ``lockstep demo`` and the Airflow tests run the real DAGs
through it; nothing here touches the user's own ``~/airflow``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from jobs import orchestration as o

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
USER, PASSWORD = "admin", "admin"
COMPONENTS = ("scheduler", "dag-processor", "api-server", "triggerer")

#: SQLite connect args for every Airflow process of the home (``[database] sql_alchemy_connect_args``):
#: wait up to 30 s for a write lock instead of Python's default 5 s, because the scheduler, the DAG
#: processor, the API server and the task processes all write to the one SQLite file.
SQLITE_CONNECT_ARGS = {"timeout": 30}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowLocal:
    """An Airflow home at ``home`` running the DAGs in ``dags_folder`` against the lake ``lake``."""

    def __init__(
        self,
        home: str | Path,
        lake: str | Path,
        dags_folder: str | Path = DAGS_FOLDER,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ):
        self.home = Path(home).resolve()
        self.lake = str(lake)
        self.dags_folder = Path(dags_folder).resolve()
        self.port = port or 8080
        self.extra_env = dict(env or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self._token: str | None = None
        self.bin = Path(sys.executable).parent

    # -- configuration -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def _secret(self, name: str) -> str:
        # Stable per home, so every component (and a later `airflow standalone`) signs tokens alike.
        path = self.home / f".{name}"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "jobs.local.airflow_local.SQLITE_CONNECT_ARGS",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": self._secret("api_secret_key"),
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "LOCKSTEP_LAKE": self.lake,
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                # `airflow standalone` starts its components as `airflow ...` from PATH: this venv's.
                "PATH": os.pathsep.join([str(self.bin), os.environ.get("PATH", "")]).rstrip(os.pathsep),
            }
        )
        env.update(self.extra_env)
        return env

    def airflow(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the ``airflow`` CLI against this home; output captured."""
        proc = subprocess.run(
            [str(self.bin / "airflow"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def init(self) -> None:
        """Create the home: metadata DB, the Lockstep pool, the admin login (admin/admin)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
        self.airflow("db", "migrate")
        self.airflow("pools", "set", o.POOL, str(o.POOL_SLOTS), o.POOL_DESCRIPTION)

    def dags_test(
        self, dag_id: str, ds: str | None = None, conf: dict | None = None, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        args = ["dags", "test", dag_id]
        if ds:
            args.append(ds)
        if conf:
            args += ["--conf", json.dumps(conf)]
        return self.airflow(*args, check=check, timeout=timeout)

    # -- services ------------------------------------------------------------------------------
    def start(self, components: tuple[str, ...] = ("scheduler", "dag-processor", "api-server")) -> None:
        logs = self.home / "service-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in components:
            if name in self.procs:
                continue
            with open(logs / f"{name}.log", "ab") as out:
                # Own process group, so stop() ends the component and the workers it forked.
                self.procs[name] = subprocess.Popen(
                    [str(self.bin / "airflow"), name],
                    env=self.env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def stop(self, timeout: float = 20) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        self.procs.clear()

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.home / "service-logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited ({proc.returncode}):\n{self.log_tail(name)}")

    # -- REST API ------------------------------------------------------------------------------
    def wait_until_up(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise TimeoutError(f"api-server not up on {self.url} after {timeout}s:\n{self.log_tail('api-server')}")

    def token(self) -> str:
        if self._token is None:
            body = json.dumps({"username": USER, "password": PASSWORD}).encode()
            req = urllib.request.Request(
                f"{self.url}/auth/token", data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                self._token = json.loads(r.read())["access_token"]
        return self._token

    def api(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        """Call ``/api/v2/<path>``; returns the decoded JSON, raises RuntimeError with the answer on 4xx/5xx."""
        url = f"{self.url}/api/v2/{path.lstrip('/')}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        return json.loads(text) if text else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        """Wait until the DAG processor has parsed ``dag_id``; unpause it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                return self.api("PATCH", f"dags/{dag_id}", {"is_paused": False})
            except RuntimeError as exc:
                if "404" not in str(exc):
                    raise
            time.sleep(2)
        errors = self.api("GET", "importErrors")
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s; import errors: {errors}")

    def create_backfill(
        self,
        dag_id: str,
        ds_from: str,
        ds_to: str,
        conf: dict | None = None,
        max_active_runs: int = 2,
        reprocess: str = "completed",
    ) -> dict:
        body = {
            "dag_id": dag_id,
            "from_date": f"{ds_from}T00:00:00Z",
            "to_date": f"{ds_to}T00:00:00Z",
            "max_active_runs": max_active_runs,
            "reprocess_behavior": reprocess,
        }
        if conf:
            body["dag_run_conf"] = conf
        # SQLite answers 503 when another component holds the write lock, and 409 "already a running
        # backfill" for a while after the previous one reported completed_at (the scheduler closes its
        # runs a loop later): both pass, so try again — for up to 3 minutes: 60 s was once not enough
        # with the full test suite loading the 2 cores (2026-12-04).
        deadline = time.monotonic() + 180
        while True:
            try:
                return self.api("POST", "backfills", body)
            except RuntimeError as exc:
                transient = "HTTP 503" in str(exc) or ("HTTP 409" in str(exc) and "running backfill" in str(exc))
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def dag_runs(self, dag_id: str, **params) -> list[dict]:
        return self.api("GET", f"dags/{dag_id}/dagRuns", params={"limit": 100, **params})["dag_runs"]

    def wait_for_runs(self, dag_id: str, count: int, timeout: float = 600, **filters) -> list[dict]:
        """Wait until ``count`` runs of ``dag_id`` matching ``filters`` are finished; return them all."""
        deadline = time.monotonic() + timeout
        runs: list[dict] = []
        while time.monotonic() < deadline:
            self.check_alive()
            runs = [r for r in self.dag_runs(dag_id) if all(r.get(k) == v for k, v in filters.items())]
            done = [r for r in runs if r["state"] in ("success", "failed")]
            if len(done) >= count:
                return runs
            time.sleep(3)
        raise TimeoutError(
            f"{dag_id}: {count} finished runs wanted after {timeout}s, have "
            f"{[(r['logical_date'], r['state']) for r in runs]}\n{self.log_tail('scheduler')}"
        )

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in tis["task_instances"]}

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
