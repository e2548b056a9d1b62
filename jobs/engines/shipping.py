"""Code shipping and the kernel version check: a cluster computes with the driver's kernel or not at all.

The driver zips the ``features`` package it imports (:func:`features_zip`, built once per content)
and ships it: ``SparkContext.addPyFile`` (:func:`ship_to_spark`) or a ``distributed`` ``UploadFile``
worker plugin, which new workers receive too, and the same for the scheduler (:func:`ship_to_dask`). Then, before any compute, every
worker reports the fingerprint of the ``features/kernel.py`` it imports
(``features.spec.kernel_fingerprint``, the function the feature-set fingerprints read the kernel
with) and a worker whose kernel differs is refused with :class:`KernelMismatchError` naming it and
both fingerprints (:func:`check_reports`). Each kernel call on a worker checks again
(:func:`check_here`), so a worker that joins after the check is refused too.

Shipping cannot replace a kernel a worker process has already imported from elsewhere (Python
keeps the loaded module); such a worker reports the stale file and is refused until restarted.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

from features.spec import kernel_fingerprint

log = logging.getLogger(__name__)

PACKAGE = "features"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the zip's bytes depend on the package only
_lock = threading.Lock()
_zips: dict[str, str] = {}
_shipped_to_spark: set[tuple[str, str]] = set()


class KernelMismatchError(RuntimeError):
    """Workers import another ``features/kernel.py`` than the driver: refused before they compute.

    ``expected`` is the driver's kernel fingerprint; ``workers`` maps each refused worker to its
    report (``kernel``: its fingerprint, ``origin``: the kernel file it imports).
    """

    def __init__(self, expected: str, workers: dict[str, dict], total: int | None = None):
        self.expected = expected
        self.workers = dict(workers)
        self.total = total
        listed = "; ".join(
            f"worker {name} has kernel {r['kernel']} (imports {r['origin']})"
            for name, r in sorted(self.workers.items())
        )
        of = f" of {total}" if total is not None else ""
        super().__init__(
            f"kernel version mismatch: this driver runs features/kernel.py {expected}, but "
            f"{len(self.workers)}{of} worker(s) import another: {listed}. Nothing was computed; restart "
            f"those workers so they import the shipped package, or install the driver's kernel there"
        )

    def __reduce__(self):  # raised inside a task, re-raised on the driver: pickle the fields, not the text
        return (type(self), (self.expected, self.workers, self.total))


def kernel_report() -> dict:
    """What this process computes with: ``kernel`` (fingerprint) and ``origin`` (the file imported)."""
    kernel = importlib.import_module(f"{PACKAGE}.kernel")  # what compute() will use: import it now
    return {"kernel": kernel_fingerprint(), "origin": kernel.__file__, "python": sys.version.split()[0]}


def check_reports(reports: dict[str, dict], expected: str | None = None) -> None:
    """Raise :class:`KernelMismatchError` unless every worker's ``kernel`` equals ``expected``
    (default: this process's kernel fingerprint)."""
    expected = expected or kernel_fingerprint()
    bad = {name: r for name, r in reports.items() if r.get("kernel") != expected}
    if bad:
        raise KernelMismatchError(expected, bad, total=len(reports))


def check_here(expected: str, worker: str) -> None:
    """Inside a task, before it reads a row: refuse unless this process runs the ``expected`` kernel."""
    report = kernel_report()
    if report["kernel"] != expected:
        raise KernelMismatchError(expected, {worker: report})


# --------------------------------------------------------------------------- the package as a zip


def features_zip() -> str:
    """A zip of the ``features`` package this process imports (``features/...`` inside), in the temp
    directory, named by a hash of its content; rebuilt only when that content changes."""
    root = Path(importlib.import_module(PACKAGE).__file__).parent
    if not root.is_dir():
        raise RuntimeError(f"cannot ship the {PACKAGE!r} package: this process imports it from {root}, not a directory")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    h = hashlib.sha256()
    contents = []
    for p in files:
        name = f"{PACKAGE}/{p.relative_to(root).as_posix()}"
        data = p.read_bytes()
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        contents.append((name, data))
    digest = h.hexdigest()[:16]
    with _lock:
        path = _zips.get(digest)
        if path and os.path.exists(path):
            return path
        path = os.path.join(tempfile.gettempdir(), f"lockstep_features-{digest}.zip")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for name, data in contents:
                    info = zipfile.ZipInfo(name, _ZIP_TIME)
                    info.external_attr = 0o644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    z.writestr(info, data)
            os.replace(tmp, path)  # another process may build the same zip at once: same bytes
        _zips[digest] = path
        return path


# --------------------------------------------------------------------------- Dask


def ship_to_dask(client) -> str | None:
    """Register the zip as ``UploadFile`` plugins of the workers and of the scheduler (once per content:
    idempotent by name), so every worker, also one that joins later, and the scheduler, which unpickles
    the task graph, put it first on ``sys.path``. Returns the plugins' name, or None when the
    scheduler runs in this process (nothing to ship, see below)."""
    from distributed.diagnostics.plugin import SchedulerUploadFile, UploadFile

    if _scheduler_runs_here(client):
        # A LocalCluster started by this process: its workers are this process's threads or
        # processes spawned with its sys.path, so they import this very package. Shipping would
        # make the plugins reload ``features`` from the zip in this process (the scheduler's).
        return None
    path = features_zip()
    name = Path(path).stem
    for plugin in (SchedulerUploadFile(path, load=True), UploadFile(path, load=True)):
        # An instance attribute, not a subclass: the plugin is unpickled where this package may not
        # be yet. Idempotent: registering the same zip again does nothing.
        plugin.idempotent = True
        client.register_plugin(plugin, name=name)
    return name


def _scheduler_runs_here(client) -> bool:
    # Builtins, pickled by reference: a scheduler without this package can run them.
    here = (socket.gethostname(), os.getpid())
    return (client.run_on_scheduler(socket.gethostname), client.run_on_scheduler(os.getpid)) == here


def verify_dask(client, expected: str | None = None) -> dict[str, dict]:
    """Every worker's :func:`kernel_report` (by worker address), checked against ``expected``."""
    reports = client.run(kernel_report)
    if not reports:
        log.warning("dask: no workers to check the kernel of; tasks check it themselves")
    check_reports(reports, expected)
    return reports


# --------------------------------------------------------------------------- Spark


def ship_to_spark(spark) -> str:
    """``addPyFile`` the zip to this session's SparkContext (once per application and content)."""
    sc = spark.sparkContext
    path = features_zip()
    key = (sc.applicationId, path)
    with _lock:
        if key not in _shipped_to_spark:
            sc.addPyFile(path)
            _shipped_to_spark.add(key)
    return path


def verify_spark(spark, expected: str | None = None) -> dict[str, dict]:
    """The :func:`kernel_report` of the executors a small job reaches (one task per core), checked.

    Tasks go where the scheduler puts them, so this may not reach every executor; every kernel
    call checks again (:func:`check_here`).
    """
    sc = spark.sparkContext
    n = max(int(sc.defaultParallelism), 1)
    reports = dict(sc.parallelize(range(n), n).mapPartitions(_spark_report).collect())
    check_reports(reports, expected)
    return reports


def _spark_report(_rows):
    yield spark_executor_name(), kernel_report()


def spark_executor_name() -> str:
    """This Python worker's executor: ``executor <id> on <host> (pid N)`` (the id from the log URL
    the standalone worker gives the executor; local mode has none)."""
    url = os.environ.get("SPARK_LOG_URL_STDERR", "")
    found = re.search(r"executorId=([^&]+)", url)
    host = re.search(r"//([^/]+)/", url)
    where = host.group(1) if host else socket.gethostname()
    ident = f"executor {found.group(1)}" if found else "local executor"
    return f"{ident} on {where} (pid {os.getpid()})"
