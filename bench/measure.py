"""Run one variant in a fresh subprocess and sample its memory.

The parent polls ``psutil`` every ``POLL_S`` over the child and all its
descendants (Dask nannies and workers, Spark's JVM and its Python workers) and
keeps two peaks: the summed RSS of the whole tree and the largest single
process, the latter from each process's ``VmHWM`` (its kernel-tracked peak RSS, so
spikes between polls count; the child reports its own at exit too).
It also records the tree's CPU seconds and the machine's mean 1-minute load
average during the run (the box may be shared: a load above the core count
means the wall times are inflated by others' work).
A child past its timeout is killed with its descendants (only the processes this
module started, by pid) and recorded as ``timeout``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.1


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def run_child(ctx: dict, ctx_path: str, log_path: str, timeout_s: float) -> dict:
    with open(ctx_path, "w") as f:
        json.dump(ctx, f, indent=1)
    if os.path.exists(ctx["result_path"]):
        os.remove(ctx["result_path"])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    loads = [os.getloadavg()[0]]
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.child", ctx_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        proc = psutil.Process(child.pid)
        seen: dict[int, psutil.Process] = {}
        try:
            cpu: dict[int, float] = {}
            peaks: dict[int, int] = {}
            roles: dict[int, str] = {}
            peak_tree = peak_one = 0
            timed_out = False
            last_load = t0
            while child.poll() is None:
                total = 0
                for p in _tree(proc):
                    try:
                        rss = p.memory_info().rss
                        ct = p.cpu_times()
                    except psutil.Error:
                        continue
                    if p.pid not in seen:
                        seen[p.pid] = p
                    if roles.get(p.pid) not in _FINAL_ROLES:  # a spawned worker renames itself later
                        roles[p.pid] = _role(p, child.pid)
                    cpu[p.pid] = ct.user + ct.system  # own time only: children are counted as themselves
                    peaks[p.pid] = max(peaks.get(p.pid, 0), rss, hwm(p.pid))
                    total += rss
                    peak_one = max(peak_one, peaks[p.pid])
                peak_tree = max(peak_tree, total)
                if time.monotonic() - last_load > 5:
                    loads.append(os.getloadavg()[0])
                    last_load = time.monotonic()
                if time.monotonic() - t0 > timeout_s:
                    timed_out = True
                    _kill(proc, seen)
                    break
                time.sleep(POLL_S)
        except BaseException:  # Ctrl-C / SIGTERM of the runner: take the variant's tree down too
            _kill(proc, seen)
            raise
        child.wait()
        elapsed = time.monotonic() - t0
    loads.append(os.getloadavg()[0])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    _reap_leftovers(seen)
    result = {"variant": ctx["variant"], "size": ctx["size"], "ok": False}
    if os.path.exists(ctx["result_path"]) and not timed_out:
        with open(ctx["result_path"]) as f:
            result = json.load(f)
    peak_one = max(peak_one, result.get("vmhwm_self", 0))
    # The tree's sum is never below its largest process; polling can miss a short spike that
    # VmHWM caught, so the largest process bounds the tree's peak from below.
    result.update(
        process_s=elapsed,
        peak_tree_bytes=max(peak_tree, peak_one),
        timed_out=timed_out,
        peak_one_bytes=peak_one,
        log=log_path,
        returncode=child.returncode,
        # CPU seconds of the whole tree, start to exit (setup included): the reaped total
        # when every descendant was waited for, else the last polled per-process figures.
        cpu_s=max(reaped_cpu, sum(cpu.values())),
        load_avg=sum(loads) / len(loads),
        procs=[
            {"pid": pid, "role": roles[pid], "peak_rss_bytes": peaks.get(pid, 0), "cpu_s": round(cpu.get(pid, 0.0), 2)}
            for pid in seen
        ],
    )
    if timed_out:
        result["error"] = f"timeout after {timeout_s:.0f}s"
    elif not result.get("ok") and "error" not in result:
        result["error"] = f"child exited with {child.returncode} and no result (see {log_path})"
    return result


_FINAL_ROLES = ("variant", "dask worker", "spark jvm", "spark python worker", "resource tracker")


def hwm(pid: int) -> int:
    """The process's peak RSS so far (``VmHWM``, bytes): exact between polls, unlike sampling.

    Not ``ru_maxrss``: a child started with vfork/exec (subprocess, multiprocessing) inherits
    its parent's high-water mark there, so a big runner would inflate every variant."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _role(p: psutil.Process, root_pid: int) -> str:
    """What a process of the tree is: the variant's own process, a Dask worker, Spark's JVM, ..."""
    if p.pid == root_pid:
        return "variant"
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "?"
    if cmd.startswith("dask worker"):
        return "dask worker"
    if "multiprocessing.spawn" in cmd:
        return "spawned python"
    if "java" in cmd.split(" ")[0]:
        return "spark jvm"
    if "pyspark.daemon" in cmd or "pyspark/daemon" in cmd or "pyspark.worker" in cmd:
        return "spark python worker"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return cmd[:60]


def _kill(proc: psutil.Process, seen: dict[int, psutil.Process]) -> None:
    """SIGKILL the child and every descendant seen (by pid; identity checked by psutil)."""
    victims = _tree(proc)
    victims += [p for pid, p in seen.items() if pid not in {v.pid for v in victims}]
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)


def _reap_leftovers(seen: dict[int, psutil.Process]) -> None:
    """Descendants that outlived the child (e.g. an orphaned JVM) would skew the next variant."""
    alive = []
    for p in seen.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=10)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass
