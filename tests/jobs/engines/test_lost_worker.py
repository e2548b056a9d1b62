"""A Dask worker killed (SIGKILL) mid-build: the scheduler reschedules its tasks on the survivor,
the snapshot is bit-identical to the local engine's and published exactly once.

The workers run without a nanny (``--no-nanny``), so the kill is a lost machine: nothing restarts
the process. To make the kill land while the victim holds a compute task, a test-only worker plugin
sleeps ``DELAY`` seconds when a compute task starts executing (it changes no output). The engine
leaves ``distributed.scheduler.allowed-failures`` at Dask's default (3): a task may be on 3 workers
that die before the run fails; ``test_out_of_core`` sets it to 0 so a memory-limit kill fails loudly.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
from clusters import dask_cli_cluster, jobs_only_path
from distributed.diagnostics.plugin import WorkerPlugin

from features import repo
from jobs.config import Config

pytestmark = [pytest.mark.cluster, pytest.mark.dask]

FS = repo.load().model("repurchase_90d").feature_sets[0]
DS = "1997-02-02"
DELAY = 0.5  # seconds a compute task waits before it runs (test-only plugin)
BUCKETS = 8


class SlowComputeStart(WorkerPlugin):
    """Worker plugin: a ``lockstep-compute-*`` task that starts executing sleeps first, so it is
    still running on its worker when the test looks (the sleep blocks before the task, not in it)."""

    name = "lockstep-test-slow-compute"

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith("lockstep-compute-"):
            time.sleep(DELAY)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    from jobs.ingest.landing import land
    from jobs.snapshots import build_snapshot, snapshot_table

    cfg = Config(lake_root=str(tmp_path_factory.mktemp("lost-worker") / "lake"))
    land(cfg, FS.source.name, "1997-01-01", "1997-03-02")
    build_snapshot(cfg, DS, allow_unvalidated=True)
    table = snapshot_table(cfg.lake(), FS)
    return cfg, table.read(DS), table.manifest(DS)


def test_a_killed_dask_worker_is_rescheduled_and_the_snapshot_published_once(lake, tmp_path):
    from distributed import Client

    from jobs.snapshots import build_snapshot, snapshot_table

    base, want_frame, want_manifest = lake
    code = jobs_only_path(tmp_path / "code")
    with dask_cli_cluster(tmp_path / "cluster", [code, code], memory_limit="2GiB", nanny=False) as cluster:
        with Client(cluster["address"]) as c:
            cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests
            c.register_plugin(SlowComputeStart())
            pids = c.run(os.getpid)
        victim = cluster["workers"]["w1"]
        survivor = cluster["workers"]["w0"]

        # an undisturbed build on the same cluster: the baseline time
        clean = dataclasses.replace(base, lake_root=str(tmp_path / "clean"), engine="dask")
        _copy_raw(base, clean)
        clean = dataclasses.replace(clean, dask_address=cluster["address"], buckets=BUCKETS)
        t0 = time.monotonic()
        build_snapshot(clean, DS, allow_unvalidated=True)
        t_clean = time.monotonic() - t0

        cfg = dataclasses.replace(clean, lake_root=str(tmp_path / "killed"))
        _copy_raw(base, cfg)
        result, errors = {}, []

        def build():
            try:
                result["manifest"] = build_snapshot(cfg, DS, allow_unvalidated=True)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        with Client(cluster["address"]) as watch:
            t0 = time.monotonic()
            thread = threading.Thread(target=build, daemon=True)
            thread.start()
            held = []
            deadline = time.monotonic() + 60
            while not held and time.monotonic() < deadline and thread.is_alive():
                held = [k for k in watch.processing().get(victim, ()) if str(k).startswith("lockstep-compute-")]
                time.sleep(0.02)
            assert held, "the victim never held a compute task"
            os.kill(pids[victim], signal.SIGKILL)
            t_kill = time.monotonic() - t0
            thread.join(90)
            t_killed = time.monotonic() - t0
            assert not thread.is_alive(), "the build did not finish within 90 s of the kill"
            assert not errors, errors
            alive = set(watch.scheduler_info()["workers"])
        assert victim not in alive and survivor in alive
        sched_log = (cluster["logs"] / "scheduler.log").read_text(errors="replace")
        assert f"Remove worker addr: {victim}" in sched_log or f"Remove worker {victim}" in sched_log, sched_log[-2000:]

    # bit-identical to the local engine
    table = snapshot_table(cfg.lake(), FS)
    manifest = table.manifest(DS)
    assert manifest.producer["engine"] == "dask"
    assert manifest.content_fingerprint == want_manifest.content_fingerprint
    assert manifest.rows == want_manifest.rows == len(want_frame)
    got = table.read(DS).sort_values([FS.entity, "as_of"], ignore_index=True)
    pd.testing.assert_frame_equal(
        got, want_frame.sort_values([FS.entity, "as_of"], ignore_index=True), check_exact=True
    )

    # published exactly once: one partition, its directory holds the manifest and its files only
    assert [str(p) for p in table.partitions()] == [DS]
    root = Path(cfg.lake_root)
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "raw" not in p.parts)
    snap = [p for p in written if p.startswith("feature_snapshots/")]
    data = [p for p in snap if not p.endswith(".json")]
    assert len(data) == len(manifest.files), snap
    assert not [p for p in snap if ".tmp-" in p or "candidate" in p or "staged" in p], snap
    assert not (root / "_scratch").exists() or not any((root / "_scratch").rglob("*"))
    print(
        f"\nlost dask worker: clean build {t_clean:.1f}s; killed build {t_killed:.1f}s "
        f"(kill at {t_kill:.1f}s, {len(held)} task(s) held by the victim); {manifest.rows} rows"
    )


def _copy_raw(base: Config, cfg: Config) -> None:
    shutil.copytree(
        base.lake_root, cfg.lake_root, ignore=shutil.ignore_patterns("feature_snapshots", "training_sets", "_scratch")
    )


def test_with_allowed_failures_0_the_same_kill_fails_the_build_and_publishes_nothing(lake, tmp_path, monkeypatch):
    """What ``test_out_of_core`` relies on: a scheduler with ``allowed-failures=0`` gives up on the
    first task that was running on a dead worker (``KilledWorker``); the build raises, nothing is published."""
    from distributed import Client, KilledWorker

    from jobs.snapshots import build_snapshot, snapshot_table

    base, _, _ = lake
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")  # the CLI processes inherit it
    code = jobs_only_path(tmp_path / "code")
    with dask_cli_cluster(tmp_path / "cluster", [code, code], memory_limit="2GiB", nanny=False) as cluster:
        with Client(cluster["address"]) as c:
            cloudpickle.register_pickle_by_value(sys.modules[__name__])
            c.register_plugin(SlowComputeStart())
            pids = c.run(os.getpid)
        victim = cluster["workers"]["w1"]
        cfg = dataclasses.replace(base, lake_root=str(tmp_path / "killed"), engine="dask")
        _copy_raw(base, cfg)
        cfg = dataclasses.replace(cfg, dask_address=cluster["address"], buckets=BUCKETS)
        errors = []

        def build():
            try:
                build_snapshot(cfg, DS, allow_unvalidated=True)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        with Client(cluster["address"]) as watch:
            thread = threading.Thread(target=build, daemon=True)
            thread.start()
            held, deadline = [], time.monotonic() + 60
            while not held and time.monotonic() < deadline and thread.is_alive():
                held = [k for k in watch.processing().get(victim, ()) if str(k).startswith("lockstep-compute-")]
                time.sleep(0.02)
            assert held, "the victim never held a compute task"
            os.kill(pids[victim], signal.SIGKILL)
            thread.join(90)
        assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], KilledWorker), errors
    assert str(errors[0]).startswith("Attempted to run task 'lockstep-compute-"), str(errors[0])
    assert "' on 1 different workers, but all those workers died while running it." in str(errors[0])
    assert snapshot_table(cfg.lake(), FS).partitions() == []
