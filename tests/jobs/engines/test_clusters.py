"""The engines on real clusters, started as separate processes on loopback (``tests/clusters.py``):
a Spark standalone master + worker and a ``dask scheduler`` + two ``dask worker`` processes.

Snapshots and a training set are built on the local engine, then rebuilt on each cluster into the
same lake: every partition must be bit-identical (frames with ``check_exact`` and the manifests'
content fingerprints). The workers' ``PYTHONPATH`` holds ``jobs`` but not ``features``: they compute
with the package the driver ships, and each reports the kernel it imports. A worker that runs
another kernel is refused before it computes a row, and nothing is published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
from clusters import REPO, dask_cli_cluster, jobs_only_path

from features import repo
from features.spec import kernel_fingerprint
from jobs.config import Config
from jobs.engines import KernelMismatchError
from jobs.engines.shipping import check_here, features_zip, kernel_report

pytestmark = pytest.mark.cluster

MODEL = repo.load().model("repurchase_90d")
FS = MODEL.feature_sets[0]
MODEL_28D = dataclasses.replace(MODEL, label=dataclasses.replace(MODEL.label, horizon_days=28))
CUTOFF = "1997-02-03"
SNAPSHOT_DAYS = ["1997-01-20", "1997-02-02"]
PY = sys.version.split()[0]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """CDNOW landed for 1997-01-01..03-02, labels at the cut-off; the local engine's partitions."""
    from jobs.ingest.landing import land
    from jobs.snapshots import build_snapshot, snapshot_table
    from jobs.training.labels import build_labels
    from jobs.training.training_set import build_training_set, training_set_table

    cfg = Config(lake_root=str(tmp_path_factory.mktemp("cluster-lake") / "lake"))
    land(cfg, FS.source.name, "1997-01-01", "1997-03-02")
    build_labels(cfg, MODEL_28D, [CUTOFF], allow_unvalidated=True)
    for ds in SNAPSHOT_DAYS:
        build_snapshot(cfg, ds, allow_unvalidated=True)
    build_training_set(cfg, MODEL, CUTOFF, validate=False, allow_unvalidated=True)
    lk = cfg.lake()
    local = {
        ("snapshot", ds): (snapshot_table(lk, FS).read(ds), snapshot_table(lk, FS).manifest(ds)) for ds in SNAPSHOT_DAYS
    }
    ts = training_set_table(lk, MODEL)
    local[("training_set", CUTOFF)] = (ts.read(CUTOFF), ts.manifest(CUTOFF))
    assert all(len(frame) > 500 for frame, _ in local.values())
    return cfg, local


def published(cfg: Config) -> dict:
    from jobs.snapshots import snapshot_table
    from jobs.training.training_set import training_set_table

    lk = cfg.lake()
    out = {("snapshot", ds): snapshot_table(lk, FS) for ds in SNAPSHOT_DAYS}
    out[("training_set", CUTOFF)] = training_set_table(lk, MODEL)
    return {key: (t.read(key[1]), t.manifest(key[1])) for key, t in out.items()}


def assert_bit_identical(cfg: Config, local: dict, engine: str) -> None:
    got = published(cfg)
    for key, (want_frame, want_manifest) in local.items():
        frame, manifest = got[key]
        assert manifest.producer["engine"] == engine, key
        assert manifest.files != want_manifest.files, f"{key} was not rebuilt"  # new write ids
        # rows in engine order (buckets); the content fingerprint is order-independent, the values exact
        pd.testing.assert_frame_equal(_sorted(frame), _sorted(want_frame), check_exact=True)
        assert manifest.content_fingerprint == want_manifest.content_fingerprint, key
        assert manifest.rows == want_manifest.rows


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values([FS.entity, "as_of"], kind="stable", ignore_index=True)


def rebuild(cfg: Config, **engine_options) -> None:
    from jobs.snapshots import build_snapshot
    from jobs.training.training_set import build_training_set

    for ds in SNAPSHOT_DAYS:
        build_snapshot(cfg, ds, **engine_options, allow_unvalidated=True)
    build_training_set(cfg, MODEL, CUTOFF, validate=False, **engine_options, allow_unvalidated=True)


# --------------------------------------------------------------------------- Dask


@pytest.mark.dask
def test_dask_cli_cluster_is_bit_identical_to_local_with_the_shipped_package(lake, dask_cli_scheduler):
    from distributed import Client

    cfg, local = lake
    cfg = dataclasses.replace(cfg, engine="dask", dask_address=dask_cli_scheduler["address"], buckets=4)
    rebuild(cfg)  # through cfg.dask_address, as `lockstep --engine dask --dask-address ...` does
    assert_bit_identical(cfg, local, "dask")

    with Client(dask_cli_scheduler["address"]) as c:
        reports = c.run(kernel_report)
    zip_name = Path(features_zip()).name
    assert sorted(reports) == sorted(dask_cli_scheduler["workers"].values())
    for origin in reports.values():  # features came from the shipped zip: the workers have no other
        assert origin["kernel"] == kernel_fingerprint()
        assert f"{zip_name}/features/kernel.py" in origin["origin"], origin


def stale_features(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``features`` under ``tmp_path/stale`` with one line added to ``kernel.py``."""
    stale = tmp_path / "stale"
    shutil.copytree(REPO / "features", stale / "features", ignore=shutil.ignore_patterns("__pycache__"))
    kernel = stale / "features" / "kernel.py"
    kernel.write_text(kernel.read_text() + "\nSTALE_EDIT = 1  # one edited line\n")
    return stale, kernel


def fingerprint_of(kernel: Path) -> str:
    return hashlib.sha256(kernel.read_bytes()).hexdigest()[:16]


def fresh_lake(base: Config, root: Path, **fields) -> Config:
    """A copy of the module's lake with the raw events only: no snapshot or training set published."""
    shutil.copytree(base.lake_root, root, ignore=shutil.ignore_patterns("feature_snapshots", "training_sets"))
    return dataclasses.replace(base, lake_root=str(root), **fields)


@pytest.fixture
def stale_dask_cluster(tmp_path):
    """Two CLI workers whose PYTHONPATH puts a copy of ``features`` with one edited kernel line first:
    w0 imports that kernel at start (``--preload features.kernel``), as a long-running worker that
    already computed with it would; w1 has the same path but has imported nothing yet."""
    stale, kernel = stale_features(tmp_path)
    path = f"{stale}{os.pathsep}{jobs_only_path(tmp_path / 'code')}"
    with dask_cli_cluster(tmp_path / "cluster", [path, path], preload=[["features.kernel"], []]) as cluster:
        yield cluster, str(kernel)


@pytest.mark.dask
def test_a_worker_with_another_kernel_is_refused_before_it_computes(lake, stale_dask_cluster):
    from distributed import Client

    from jobs.snapshots import build_snapshot, snapshot_table
    from jobs.training.training_set import build_training_set

    (cluster, stale_kernel) = stale_dask_cluster
    base, _ = lake
    root = Path(base.lake_root).parent / "stale-lake"
    cfg = fresh_lake(base, root, engine="dask", dask_address=cluster["address"], buckets=4)
    stale_fp = fingerprint_of(Path(stale_kernel))
    assert stale_fp != kernel_fingerprint()
    w0, w1 = cluster["workers"]["w0"], cluster["workers"]["w1"]

    with pytest.raises(KernelMismatchError) as err:
        build_snapshot(cfg, SNAPSHOT_DAYS[0], allow_unvalidated=True)
    msg = str(err.value)
    assert msg == (
        f"kernel version mismatch: this driver runs features/kernel.py {kernel_fingerprint()}, but 1 of 2 "
        f"worker(s) import another: worker {w0} has kernel {stale_fp} (imports {stale_kernel}). Nothing was "
        "computed; restart those workers so they import the shipped package, or install the driver's kernel there"
    )
    assert err.value.expected == kernel_fingerprint() and list(err.value.workers) == [w0]
    with pytest.raises(KernelMismatchError, match=f"worker {w0} has kernel {stale_fp}"):
        build_training_set(cfg, MODEL, CUTOFF, validate=False, allow_unvalidated=True)

    # nothing published, nothing left in scratch, and no task ever ran on the cluster
    assert snapshot_table(cfg.lake(), FS).partitions() == []
    assert not (root / "training_sets").exists() or not any((root / "training_sets").rglob("_manifest.json"))
    assert not (root / "_scratch").exists() or not any((root / "_scratch").iterdir())
    with Client(cluster["address"]) as c:
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _task_count: the scheduler cannot import tests
        assert c.run_on_scheduler(_task_count) == 0
        # w1 imported nothing before the package arrived: the shipped kernel wins over its PYTHONPATH
        assert c.run(kernel_report, workers=[w1])[w1]["kernel"] == kernel_fingerprint()
        # a task that reaches w0 anyway (a worker joining after the check) refuses itself, on the worker
        with pytest.raises(KernelMismatchError) as in_task:
            c.submit(check_here, kernel_fingerprint(), w0, workers=[w0], pure=False).result()
        assert in_task.value.workers == {w0: {"kernel": stale_fp, "origin": stale_kernel, "python": PY}}
        assert c.submit(check_here, kernel_fingerprint(), w1, workers=[w1], pure=False).result() is None


def _task_count(dask_scheduler) -> int:
    return len(dask_scheduler.task_prefixes)


# --------------------------------------------------------------------------- Spark


SPARK_DRIVER = """
import json, sys, time
from jobs.engines import spark_engine
from jobs.engines.shipping import verify_spark
from jobs.cli import main

t0 = time.monotonic()
spark = spark_engine.get_spark(sys.argv[1], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
for name, report in sorted(verify_spark(spark).items()):
    print("REPORT", name, report["kernel"], report["origin"])
print("STARTED", round(time.monotonic() - t0, 1))
for argv in json.loads(sys.argv[2]):  # one application for every command: one executor start
    t0 = time.monotonic()
    rc = main(argv)
    print("RAN", argv[-1], rc, round(time.monotonic() - t0, 1))
    if rc:
        sys.exit(rc)
spark.stop()
"""


def spark_cli(master: str, lake_root: str, *commands: list[str], conf=None) -> subprocess.CompletedProcess:
    """``lockstep --engine spark --spark-master MASTER <command>`` for each command, in one driver
    process of its own (this process may hold a local[2] SparkContext; there is one per process)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "LOCKSTEP_LAKE": lake_root,
    }
    flags = ["--engine", "spark", "--spark-master", master, "--buckets", "4"]
    argvs = json.dumps([flags + list(c) for c in commands])
    cmd = [sys.executable, "-c", SPARK_DRIVER, master, argvs] + ([json.dumps(conf)] if conf else [])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)


@pytest.mark.spark
def test_spark_standalone_cluster_is_bit_identical_to_local_with_the_shipped_package(lake, spark_standalone_cluster):
    cfg, local = lake
    master = spark_standalone_cluster["master"]
    assert master.startswith("spark://127.0.0.1:")
    res = spark_cli(
        master,
        cfg.lake_root,
        # the fixture's raw days are never validated: this test is about the engines, not the gate
        *(["snapshot", "--ds", ds, "--allow-unvalidated"] for ds in SNAPSHOT_DAYS),
        ["training-set", "--from", CUTOFF, "--no-validate", "--allow-unvalidated"],
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    reports = [line.split() for line in res.stdout.splitlines() if line.startswith("REPORT")]
    zip_name = Path(features_zip()).name
    assert reports, res.stdout
    for line in reports:  # an executor of the standalone worker, with the driver's kernel, from the zip
        assert line[1:3] == ["executor", "0"] and line[4].startswith("127.0.0.1:"), line
        assert line[-2] == kernel_fingerprint() and f"{zip_name}/features/kernel.py" in line[-1], line
    assert_bit_identical(dataclasses.replace(cfg, engine="spark"), local, "spark")


STALE_DAEMON = """
import features.kernel  # a Python worker that imported another kernel before the shipped package came
from pyspark import daemon

if __name__ == "__main__":
    daemon.manager()
"""


@pytest.mark.spark
def test_an_executor_with_another_kernel_is_refused_before_it_computes(lake, spark_standalone_cluster, tmp_path):
    """Spark's Python workers fork from a daemon; this one imported an edited kernel first."""
    from jobs.snapshots import snapshot_table

    stale, kernel = stale_features(tmp_path)
    (stale / "lockstep_stale_daemon.py").write_text(STALE_DAEMON)
    cfg = fresh_lake(lake[0], tmp_path / "lake", engine="spark")
    # executorEnv replaces the executor's PYTHONPATH (the worker's): jobs must stay on it
    path = f"{stale}{os.pathsep}{jobs_only_path(tmp_path / 'code')}"
    conf = {"spark.python.daemon.module": "lockstep_stale_daemon", "spark.executorEnv.PYTHONPATH": path}
    res = spark_cli(
        spark_standalone_cluster["master"],
        cfg.lake_root,
        ["snapshot", "--ds", SNAPSHOT_DAYS[0], "--allow-unvalidated"],
        conf=conf,
    )
    assert res.returncode != 0
    assert "REPORT" not in res.stdout and "RAN" not in res.stdout
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"jobs.engines.shipping.KernelMismatchError: kernel version mismatch: this driver runs features/kernel.py "
        f"{kernel_fingerprint()}, but 1 of 1 worker(s) import another: worker executor 0 on 127.0.0.1:"
    ), res.stderr[-3000:]
    assert f"has kernel {fingerprint_of(kernel)} (imports {kernel}). Nothing was computed" in last
    assert snapshot_table(cfg.lake(), FS).partitions() == []
    assert not (tmp_path / "lake" / "_scratch").exists() or not any((tmp_path / "lake" / "_scratch").iterdir())
