"""The shadow scorer's own process (``jobs.serving.shadow_process``): it tails this process's WAL,
scores the rows offered to a challenger with that version, writes the shadow WAL; a backlog handed
over (crash recovery) and drops are scored or marked; a child that dies is replaced without scoring
anything twice; it runs at the declared nice value; a model it cannot get is refused plainly."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from jobs.serving.log import ServingLog, make_record, read_wal, shadow_wal_dir, wal_records
from jobs.serving.model import LinearModel
from jobs.serving.shadow_process import ShadowProcess

from .conftest import MODEL

NAMES = list(MODEL.feature_names)


def challenger(version: str = "4") -> LinearModel:
    return LinearModel(MODEL.name, version, MODEL.fingerprint, NAMES, np.linspace(0.04, -0.03, len(NAMES)))


def served(i: int, shadow_version: str | None = "4") -> dict:
    values = {n: float((i * 7 + j) % 11) if (i + j) % 5 else None for j, n in enumerate(NAMES)}
    return make_record(
        MODEL,
        request_id=f"r{i}",
        request_time=1_000_000 + i,
        entity_id=i,
        model_version="3",
        score=0.5,
        arm="champion",
        shadow_version=shadow_version,
        **values,
    )


def expected(rows: list[dict], model: LinearModel) -> list[float]:
    x = np.array([[np.nan if r[n] is None else r[n] for n in NAMES] for r in rows], dtype=np.float64)
    return [float(s) for s in model.predict_matrix(x)]


def shadow_rows(wal) -> dict:
    return {r["request_id"]: r for r in wal_records(sorted(shadow_wal_dir(wal).glob("segment-*.jsonl")))}


@pytest.fixture
def wal(tmp_path):
    log = ServingLog(tmp_path / "wal", MODEL, fsync="never").start()
    yield log
    log.close()


def scorer(wal, **kw) -> ShadowProcess:
    return ShadowProcess(NAMES, wal.wal_dir, lambda: wal.segment, fsync="never", poll_s=0.02, **kw).start()


def test_rows_offered_in_the_wal_are_scored_once_by_their_version_in_a_niced_process(wal):
    scored = []
    shadow = scorer(wal, on_scored=lambda v, n: scored.append((v, n)))
    try:
        shadow.install(challenger("4"))
        rows = [served(i) for i in range(50)] + [served(50, shadow_version=None)]  # a row offered to none
        wal.submit_many(rows).result()
        assert shadow.flush(timeout=30)
        assert shadow.ready and psutil.Process(shadow.pid).nice() == 19
        shadow.install(challenger("5"))  # a new challenger: later rows name it, earlier ones keep v4
        later = [served(i, "5") for i in range(51, 60)]
        wal.submit_many(later).result()
        assert shadow.flush(timeout=30)
        got = shadow_rows(wal.wal_dir)
    finally:
        shadow.close()
    assert set(got) == {f"r{i}" for i in range(50)} | {f"r{i}" for i in range(51, 60)}
    assert [got[f"r{i}"]["shadow_score"] for i in range(50)] == expected(rows[:50], challenger("4"))
    assert [got[f"r{i}"]["shadow_score"] for i in range(51, 60)] == expected(later, challenger("5"))
    assert {got[f"r{i}"]["shadow_version"] for i in range(50)} == {"4"}
    assert shadow.scored == 59 and sum(n for v, n in scored if v == "4") == 50
    merged = read_wal(wal.wal_dir, MODEL).set_index("request_id")
    assert merged.loc["r3", "shadow_score"] == got["r3"]["shadow_score"]
    assert shadow.pid is None  # closed: the child is gone


def test_a_handed_over_backlog_is_scored_and_drops_are_marked_and_counted(wal):
    drops = []
    shadow = scorer(wal, on_drop=lambda n, reason: drops.append((n, reason)))
    try:
        model = challenger("4")
        shadow.install(model)
        back = [served(i) for i in range(100, 110)]
        shadow.backlog([r["request_id"] for r in back], [r["request_time"] for r in back], back, model)
        shadow.drop(3, "crash", "2", ["x1", "x2", "x3"], [1, 2, 3])
        assert shadow.flush(timeout=30)
        got = shadow_rows(wal.wal_dir)
    finally:
        shadow.close()
    assert [got[r["request_id"]]["shadow_score"] for r in back] == expected(back, model)
    assert {got[i]["shadow_dropped"] for i in ("x1", "x2", "x3")} == {"crash"}
    assert shadow.dropped["crash"] == 3 and drops == [(3, "crash")]


class Failing(LinearModel):
    def predict_matrix(self, x):
        raise RuntimeError("challenger broke")


def test_a_failing_challenger_drops_its_rows_as_errors_and_the_service_side_never_raises(wal):
    shadow = scorer(wal)
    try:
        shadow.install(Failing(MODEL.name, "4", MODEL.fingerprint, NAMES))
        wal.submit_many([served(i) for i in range(5)]).result()
        assert shadow.flush(timeout=30)
        got = shadow_rows(wal.wal_dir)
    finally:
        shadow.close()
    assert shadow.dropped["error"] == 5 and shadow.scored == 0
    assert {r["shadow_dropped"] for r in got.values()} == {"error"} and len(got) == 5


def test_a_killed_child_is_replaced_and_scores_nothing_twice(wal):
    shadow = scorer(wal)
    try:
        shadow.install(challenger("4"))
        wal.submit_many([served(i) for i in range(20)]).result()
        assert shadow.flush(timeout=30)
        first = shadow.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (shadow.pid == first or shadow.restarts == 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shadow.restarts == 1 and shadow.pid != first
        wal.submit_many([served(i) for i in range(20, 30)]).result()
        assert shadow.flush(timeout=30)
        records = wal_records(sorted(shadow_wal_dir(wal.wal_dir).glob("segment-*.jsonl")))
    finally:
        shadow.close()
    ids = [r["request_id"] for r in records]
    assert sorted(ids) == sorted(f"r{i}" for i in range(30))  # each once, across both children


def test_a_challenger_that_cannot_be_pickled_is_refused_with_the_setting_to_use(wal):
    shadow = scorer(wal)
    model = challenger("4")
    model.lock = threading.Lock()
    try:
        with pytest.raises(TypeError, match="shadow_process=False"):
            shadow.install(model)
        assert shadow.model is None
    finally:
        shadow.close()


def test_the_child_ends_when_the_service_is_killed(tmp_path):
    """A service killed with SIGKILL: its shadow child leaves within a second (no orphan scoring on)."""
    import subprocess
    import sys

    script = tmp_path / "svc.py"
    script.write_text(
        "import sys, time\n"
        "from jobs.serving.log import ServingLog\n"
        "from jobs.serving.shadow_process import ShadowProcess\n"
        f"sys.path.insert(0, {str(os.path.dirname(__file__))!r})\n"
        "from conftest import MODEL\n"
        "from jobs.serving.model import LinearModel\n"
        "log = ServingLog(sys.argv[1], MODEL, fsync='never').start()\n"
        "s = ShadowProcess(list(MODEL.feature_names), log.wal_dir, lambda: log.segment, poll_s=0.02).start()\n"
        "s.install(LinearModel(MODEL.name, '4', MODEL.fingerprint, MODEL.feature_names))\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "wal")], stdout=subprocess.PIPE, env=env)
    child = int(proc.stdout.readline())
    assert psutil.pid_exists(child)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"shadow child {child} outlived its killed service")


def test_the_start_up_recovery_rescores_a_dead_process_backlog_through_the_child(wal):
    from jobs.serving.log import encode_record
    from jobs.serving.shadow import recover

    dead = wal.wal_dir / "segment-00000000000000000001-999999999.jsonl"  # a pid that does not exist
    rows = [served(i) for i in range(200, 240)]
    dead.write_bytes(b"".join(encode_record(r) for r in rows))
    shadow = scorer(wal)
    try:
        model = challenger("4")
        shadow.install(model)
        out = recover(shadow, wal.wal_dir, wal.segment)
        got = shadow_rows(wal.wal_dir)
    finally:
        shadow.close()
    assert out == {"segments": 1, "rescored": 40, "lost": 0, "done": True}
    assert [got[r["request_id"]]["shadow_score"] for r in rows] == expected(rows, model)
