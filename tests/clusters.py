"""Real clusters as separate processes on loopback, for the tests (``tests/conftest.py`` has the fixtures).

* :func:`spark_standalone`: ``spark-class org.apache.spark.deploy.master.Master`` and one
  ``...deploy.worker.Worker`` from the installed pyspark (``SPARK_HOME`` = the pyspark package
  directory), free ports (``--port 0``, web UIs ``--webui-port 0``, the REST submission server
  off), logs in a tmp dir; ready once the worker has registered.
* :func:`dask_cli_cluster`: ``dask scheduler`` and ``dask worker`` processes (the CLI, one
  thread and a memory limit each), the scheduler's address from its ``--scheduler-file``.

Both tear down every process they started (its process group: a Spark worker's executors and a
Dask nanny's worker too), also when starting fails. The workers' ``PYTHONPATH`` is what the
caller gives: :func:`jobs_only_path` holds ``jobs`` and not ``features``, which the engines ship.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs.engines.dask_engine import WORKER_PRELOAD

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def jobs_only_path(root: Path) -> str:
    """A directory whose only package is this checkout's ``jobs`` (a symlink): a worker's
    ``PYTHONPATH`` that lets tasks unpickle engine functions but finds no ``features``."""
    root.mkdir(parents=True, exist_ok=True)
    link = root / "jobs"
    if not link.exists():
        link.symlink_to(REPO / "jobs", target_is_directory=True)
    return str(root)


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


@contextlib.contextmanager
def _processes():
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            _stop(p)


def _start(started: list, args: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        p = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )  # a session of its own: teardown stops its process group, not just the launcher
    started.append(p)
    return p


def _stop(p: subprocess.Popen, grace: float = 15.0) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(grace)
    with contextlib.suppress(ProcessLookupError):  # children left in the group (executors)
        os.killpg(p.pid, signal.SIGKILL)


def _wait_for(what: str, found, procs: list[subprocess.Popen], logs: list[Path], timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            break
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}\n{_tail(log)}" for log in logs)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f}s (exited: {[p.args[:3] for p in dead]})\n{tails}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _grep(path: Path, pattern: str) -> str | None:
    m = re.search(pattern, _tail(path, 10**6))
    return m.group(1) if m else None


# --------------------------------------------------------------------------- Spark standalone


@contextlib.contextmanager
def spark_standalone(root: Path, python_path: str, cores: int = 1, memory: str = "1g", timeout: float = 120):
    """Yields ``{"master": "spark://127.0.0.1:PORT", "logs": dir, "work": dir}``."""
    root.mkdir(parents=True, exist_ok=True)
    home = spark_home()
    logs, work = root / "logs", root / "work"
    logs.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": LOOPBACK,
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_LOG_DIR": str(logs),
        # as in docker-compose.yaml: no REST submission server (unauthenticated, and a fixed port, 6066)
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        "PYTHONPATH": python_path,
    }
    env.pop("PYSPARK_PYTHON", None)
    spark_class = str(home / "bin" / "spark-class")
    master_log, worker_log = logs / "master.log", logs / "worker.log"
    with _processes() as started:
        master = _start(
            started,
            [spark_class, "org.apache.spark.deploy.master.Master"]
            + ["--host", LOOPBACK, "--port", "0", "--webui-port", "0"],
            master_log,
            env,
            root,
        )
        url = _wait_for(
            "spark master",
            lambda: _grep(master_log, r"Starting Spark master at (spark://\S+)"),
            [master],
            [master_log],
            timeout,
        )
        worker = _start(
            started,
            [spark_class, "org.apache.spark.deploy.worker.Worker", url]
            + ["--host", LOOPBACK, "--port", "0", "--webui-port", "0"]
            + ["--cores", str(cores), "--memory", memory, "--work-dir", str(work)],
            worker_log,
            env,
            root,
        )
        _wait_for(
            "spark worker",
            lambda: _grep(worker_log, r"(Successfully registered with master)"),
            [master, worker],
            [master_log, worker_log],
            timeout,
        )
        yield {"master": url, "logs": logs, "work": work, "pids": [master.pid, worker.pid]}


# --------------------------------------------------------------------------- Dask CLI


def dask_cli() -> list[str]:
    script = Path(sys.executable).with_name("dask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dask"]


@contextlib.contextmanager
def dask_cli_cluster(
    root: Path,
    python_paths: list[str],
    memory_limit: str = "2GiB",
    preload: list[list[str]] | None = None,
    timeout: float = 120,
    nanny: bool = True,
):
    """One ``dask scheduler`` and one ``dask worker`` per entry of ``python_paths`` (its
    ``PYTHONPATH``; ``preload[i]``: modules worker i imports at start). ``nanny=False`` starts
    each worker as one process (``--no-nanny``): a SIGKILL of it is a lost machine, nothing
    restarts it. Yields
    ``{"address": "tcp://127.0.0.1:PORT", "workers": {name: address}, "logs": dir}``."""
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    sched_file = root / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with _processes() as started:
        sched_log = logs / "scheduler.log"
        scheduler = _start(
            started,
            dask_cli()
            + ["scheduler", "--host", LOOPBACK, "--port", "0", "--no-dashboard", "--no-show"]
            + ["--scheduler-file", str(sched_file)],
            sched_log,
            {**env, "PYTHONPATH": python_paths[0]},
            root,
        )
        address = _wait_for(
            "dask scheduler",
            lambda: sched_file.exists() and _address(sched_file),
            [scheduler],
            [sched_log],
            timeout,
        )
        workers, wlogs = [], []
        for i, path in enumerate(python_paths):
            name = f"w{i}"
            wlog = logs / f"worker-{name}.log"
            args = dask_cli() + ["worker", address, "--name", name, "--host", LOOPBACK]
            args += ["--nthreads", "1", "--memory-limit", memory_limit, "--no-dashboard"]
            args += ["--local-directory", str(root / name), "--preload", WORKER_PRELOAD]
            if not nanny:
                args.append("--no-nanny")
            for module in (preload or [[]] * len(python_paths))[i]:
                args += ["--preload", module]
            workers.append(_start(started, args, wlog, {**env, "PYTHONPATH": path}, root))
            wlogs.append(wlog)

        def registered():  # each worker logs its address, then "Registered to: <scheduler>"
            found = {f"w{i}": _grep(log, r"Start worker at:\s+(tcp://\S+)") for i, log in enumerate(wlogs)}
            ok = all(found.values()) and all(_grep(log, r"(Registered to:)") for log in wlogs)
            return found if ok else None

        names = _wait_for("dask workers", registered, [scheduler, *workers], [sched_log, *wlogs], timeout)
        yield {"address": address, "workers": names, "logs": logs, "scheduler_file": str(sched_file)}


def _address(sched_file: Path) -> str | None:
    try:
        return json.loads(sched_file.read_text()).get("address")
    except (OSError, ValueError):
        return None  # written while we read it
