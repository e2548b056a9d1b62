"""What the machine did during one benchmark run, so a reader can tell the code from the box.

A run's throughput on this shared 2-core VM moves with things the load average does not show: CPU
steal (the hypervisor ran someone else), other processes' CPU, page-cache writeback, the clock. A
:class:`Sample` is read before and after a run; :func:`delta` says, for that run, the machine's CPU
seconds by kind (``/proc/stat``: user, system, iowait, steal, idle), the disk traffic
(``/proc/vmstat`` pgpgin / pgpgout, KiB), dirty and writeback page cache at the end
(``/proc/meminfo``), the mean CPU clock (``/proc/cpuinfo``) and the load average. With the run's own
CPU seconds (server, load generator) the rest is the OTHER jobs' CPU: ``others_cpu_s``.

Linux only (it reads ``/proc``); elsewhere every field is None.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass(frozen=True)
class Sample:
    at: float
    cpu: dict | None  # /proc/stat "cpu" line, seconds
    vm: dict | None  # pgpgin / pgpgout (KiB since boot)
    mem: dict | None  # Dirty / Writeback, KiB
    mhz: float | None
    children_cpu_s: float  # user + system of this process's reaped children (wrk)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def sample() -> Sample:
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stat, vm, mem, info = (_read(p) for p in ("/proc/stat", "/proc/vmstat", "/proc/meminfo", "/proc/cpuinfo"))
    cpu = None
    if stat:
        vals = stat.splitlines()[0].split()[1:]
        cpu = {k: int(v) / tick for k, v in zip(_STAT_FIELDS, vals)}
    vmd = None
    if vm:
        kv = dict(line.split() for line in vm.splitlines() if line.startswith(("pgpgin ", "pgpgout ")))
        vmd = {k: int(v) for k, v in kv.items()}
    memd = None
    if mem:
        memd = {
            line.split(":")[0]: int(line.split()[1])
            for line in mem.splitlines()
            if line.startswith(("Dirty:", "Writeback:"))
        }
    mhz = None
    if info:
        got = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
        mhz = sum(got) / len(got) if got else None
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Sample(time.monotonic(), cpu, vmd, memd, mhz, ru.ru_utime + ru.ru_stime)


def delta(a: Sample, b: Sample, *, own_cpu_s: float = 0.0) -> dict:
    """The machine between samples ``a`` and ``b``: wall seconds, CPU seconds by kind over all cores,
    ``busy_cpu_s`` (everything but idle and iowait), ``others_cpu_s`` (busy minus ``own_cpu_s``: the
    run's own processes, e.g. server + load generator), ``steal_share`` (of the cores' wall time), disk
    KiB in/out, Dirty/Writeback KiB at ``b``, the clock (MHz) at ``b``, the 1-minute load at the end."""
    out: dict = {"wall_s": b.at - a.at}
    if a.cpu and b.cpu:
        d = {k: b.cpu[k] - a.cpu[k] for k in _STAT_FIELDS}
        busy = sum(v for k, v in d.items() if k not in ("idle", "iowait"))
        cores = os.cpu_count() or 1
        out |= {
            "busy_cpu_s": busy,
            "others_cpu_s": max(busy - own_cpu_s, 0.0),
            "iowait_s": d["iowait"],
            "steal_s": d["steal"],
            "steal_share": d["steal"] / max(out["wall_s"] * cores, 1e-9),
            "idle_s": d["idle"],
        }
    if a.vm and b.vm:
        out |= {"disk_in_kib": b.vm["pgpgin"] - a.vm["pgpgin"], "disk_out_kib": b.vm["pgpgout"] - a.vm["pgpgout"]}
    if b.mem:
        out |= {"dirty_kib": b.mem.get("Dirty"), "writeback_kib": b.mem.get("Writeback")}
    out |= {"mhz": b.mhz, "load1": os.getloadavg()[0], "children_cpu_s": b.children_cpu_s - a.children_cpu_s}
    return out


def describe(d: dict) -> str:
    """One line of :func:`delta`'s numbers (what the bench prints per run)."""
    parts = []
    if "steal_s" in d:
        parts.append(f"steal {d['steal_s']:.2f} s ({d['steal_share'] * 100:.1f}%)")
        parts.append(f"others {d['others_cpu_s']:.1f} CPU-s")
        parts.append(f"iowait {d['iowait_s']:.2f} s")
    if "disk_out_kib" in d:
        parts.append(f"disk in/out {d['disk_in_kib'] / 1024:.1f}/{d['disk_out_kib'] / 1024:.1f} MiB")
    if d.get("dirty_kib") is not None:
        parts.append(f"dirty {d['dirty_kib'] / 1024:.1f} MiB")
    if d.get("mhz"):
        parts.append(f"{d['mhz']:.0f} MHz")
    parts.append(f"load {d['load1']:.1f}")
    return ", ".join(parts)
