"""A Spark executor JVM killed (SIGKILL) mid-stage on a standalone cluster: the worker launches a new
executor, the lost tasks are rerun, the snapshot is bit-identical to the local engine's and published once.

Test-only knob (no output changes): the executors' Python daemon (``spark.python.daemon.module``) wraps
``pyspark.worker.main`` so each Python task first writes a marker file and sleeps ``DELAY`` s; the test
kills the executor (``CoarseGrainedExecutorBackend``) once a marker appears after the driver's
kernel check, i.e. while a Python task of the build is running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from clusters import REPO, jobs_only_path, spark_standalone

from features import repo
from jobs.config import Config

pytestmark = [pytest.mark.cluster, pytest.mark.spark]

FS = repo.load().model("repurchase_90d").feature_sets[0]
DS = "1997-02-02"

SLOW_DAEMON = """
import os, time
import pyspark.worker
from pyspark import daemon

_main = pyspark.worker.main

def main(infile, outfile):
    marks = os.environ["LOCKSTEP_TEST_MARKS"]
    open(os.path.join(marks, f"task-{os.getpid()}-{time.time_ns()}"), "w").close()
    time.sleep(float(os.environ.get("LOCKSTEP_TEST_DELAY", "1")))
    return _main(infile, outfile)

pyspark.worker.main = main

if __name__ == "__main__":
    daemon.manager()
"""

DRIVER = """
import json, sys
from jobs.engines import spark_engine
from jobs.engines.shipping import verify_spark
from jobs.cli import main

spark = spark_engine.get_spark(sys.argv[1], json.loads(sys.argv[3]))
verify_spark(spark)
print("STARTED", flush=True)
rc = main(json.loads(sys.argv[2]))
print("RAN", rc, flush=True)
spark.stop()
sys.exit(rc)
"""


def _executors() -> list[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "CoarseGrainedExecutorBackend" in line]


def test_a_killed_spark_executor_is_replaced_and_the_snapshot_published_once(tmp_path):
    if not shutil.which("java"):
        pytest.skip("Spark needs a Java runtime")
    from jobs.ingest.landing import land
    from jobs.snapshots import build_snapshot, snapshot_table

    local = Config(lake_root=str(tmp_path / "local"))
    land(local, FS.source.name, "1997-01-01", "1997-03-02")
    build_snapshot(local, DS, allow_unvalidated=True)
    want = snapshot_table(local.lake(), FS)
    want_manifest = want.manifest(DS)

    lake_root = tmp_path / "spark"
    shutil.copytree(local.lake_root, lake_root, ignore=shutil.ignore_patterns("feature_snapshots"))
    code = tmp_path / "code"
    jobs_path = jobs_only_path(code)
    (code / "lockstep_slow_daemon.py").write_text(SLOW_DAEMON)
    marks = tmp_path / "marks"
    marks.mkdir()
    conf = {
        "spark.python.daemon.module": "lockstep_slow_daemon",
        "spark.executorEnv.PYTHONPATH": jobs_path,
        "spark.executorEnv.LOCKSTEP_TEST_MARKS": str(marks),
        "spark.executorEnv.LOCKSTEP_TEST_DELAY": "1",
    }
    with spark_standalone(tmp_path / "cluster", jobs_path, cores=1, memory="1g") as cluster:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "LOCKSTEP_LAKE": str(lake_root),
        }
        argv = [
            "--engine",
            "spark",
            "--spark-master",
            cluster["master"],
            "--buckets",
            "4",
            "snapshot",
            "--ds",
            DS,
            "--allow-unvalidated",
        ]
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, cluster["master"], json.dumps(argv), json.dumps(conf)],
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "driver.err", "w"),
            text=True,
            env=env,
            cwd=REPO,
        )
        try:
            assert driver.stdout.readline().strip() == "STARTED", (tmp_path / "driver.err").read_text()[-3000:]
            t0 = time.monotonic()  # the build starts: the kernel check is done
            before = set(os.listdir(marks))
            deadline = time.monotonic() + 90
            while set(os.listdir(marks)) == before and time.monotonic() < deadline and driver.poll() is None:
                time.sleep(0.05)
            assert set(os.listdir(marks)) != before, "no Python task of the build started"
            victims = _executors()
            assert len(victims) == 1, victims
            os.kill(victims[0], signal.SIGKILL)
            t_kill = time.monotonic() - t0
            rest = driver.communicate(timeout=180)[0]
        finally:
            if driver.poll() is None:
                driver.kill()
        elapsed = time.monotonic() - t0
        err = (tmp_path / "driver.err").read_text()
        assert driver.returncode == 0 and "RAN 0" in rest, err[-4000:]
        assert "Lost executor 0 on 127.0.0.1: Command exited with code 137" in err, err[-4000:]
        worker_log = (cluster["logs"] / "worker.log").read_text(errors="replace")
        launched = re.findall(r"Asked to launch executor (app-\S+/\d+)", worker_log)
        assert [x.rsplit("/", 1)[1] for x in launched] == ["0", "1"], worker_log[-3000:]  # a new executor
        assert f"Executor {launched[0]} finished with state EXITED message Command exited with code 137" in worker_log

    cfg = Config(lake_root=str(lake_root), engine="spark")
    table = snapshot_table(cfg.lake(), FS)
    manifest = table.manifest(DS)
    assert manifest.producer["engine"] == "spark"
    assert manifest.content_fingerprint == want_manifest.content_fingerprint
    assert manifest.rows == want_manifest.rows
    key = [FS.entity, "as_of"]
    pd.testing.assert_frame_equal(
        table.read(DS).sort_values(key, ignore_index=True),
        want.read(DS).sort_values(key, ignore_index=True),
        check_exact=True,
    )
    assert [str(p) for p in table.partitions()] == [DS]
    snap = [p.relative_to(lake_root).as_posix() for p in (lake_root / "feature_snapshots").rglob("*") if p.is_file()]
    assert len([p for p in snap if not p.endswith(".json")]) == len(manifest.files), snap
    assert not [p for p in snap if ".tmp-" in p or "candidate" in p], snap
    assert not (lake_root / "_scratch").exists() or not any((lake_root / "_scratch").rglob("*"))
    print(f"\nlost spark executor: killed build {elapsed:.1f}s (kill at {t_kill:.1f}s); {manifest.rows} rows")
