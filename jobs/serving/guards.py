"""Canary guards: judge the canary arm against the champion arm, and stop a canary that breaks them.

The service feeds :class:`ArmWindows` one observation per served query (arm, latency of that arm's
answer in ms, whether its model failed, whether it was degraded, its score) — an append to a bounded
deque under a lock, on the request path — and a :class:`GuardMonitor` thread judges the windows every
``every_s`` seconds off the request path (:func:`judge`, pure). A breach calls ``on_breach(verdict)``
once per challenger version: the service then stops the canary (share 0 in this process), records the
verdict on the challenger's registry version (``jobs.models.registry.CANARY_BREACH_TAG``: every other
worker's and a restarted service's challenger poll reads it and keeps the share at 0), counts it and
alerts. With ``--workers N`` each worker still appends to its own windows, and at every judgement
its monitor shares them with the other workers (``jobs.serving.peers``: a file per worker in the
service's shared directory) and judges the LAST ``window`` observations of each arm over all of them
(by wall-clock time): every worker's verdict covers the traffic of every worker (``Verdict.workers``:
how many it read). The first worker to judge a breach claims it (an exclusive file) and alone
records it on the registry, counts and alerts; every other worker stops serving the canary in its own
process at its next judgement (``on_follow``, the winner's evidence), not at its next poll.

The monitor also checks the champion's staleness (:func:`training_age_days`) at start and every
``staleness_s``: one alert per champion version whose training data ended more than the model's
``champion_max_age_days`` before now.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from features.model import CanaryGuards
from jobs.serving.peers import PeerDir, latest
from jobs.skew.job import psi_js

log = logging.getLogger(__name__)

GUARD_NAMES = ("p99_latency", "error_rate", "degraded_rate", "score_psi")


@dataclass(frozen=True)
class ArmStats:
    """One arm's window, as arrays (latency ms, error 0/1, degraded 0/1, score; NaN: no score)."""

    COLUMNS = 5  # a window's row: the four above and the wall-clock time it was observed at

    latency_ms: np.ndarray
    error: np.ndarray
    degraded: np.ndarray
    score: np.ndarray

    @property
    def n(self) -> int:
        return len(self.latency_ms)

    @classmethod
    def of_rows(cls, rows: list) -> np.ndarray:
        return np.array(rows, dtype=np.float64).reshape(-1, cls.COLUMNS)

    @classmethod
    def of(cls, rows) -> ArmStats:
        """From window rows (``COLUMNS`` values each; the time is not part of the stats)."""
        a = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.float64)
        a = a.reshape(-1, cls.COLUMNS)
        return cls(a[:, 0], a[:, 1], a[:, 2], a[:, 3])


@dataclass(frozen=True)
class Breach:
    guard: str
    observed: float  # the canary's value (p99 ms, rate, PSI)
    champion: float | None  # the champion's value it was compared with (None: PSI)
    threshold: float  # the limit it crossed

    def describe(self) -> str:
        base = "" if self.champion is None else f" (champion {self.champion:.4g})"
        return f"{self.guard}: {self.observed:.4g}{base} > {self.threshold:.4g}"


@dataclass(frozen=True)
class Verdict:
    judged: bool  # both arms had min_requests
    n_champion: int
    n_canary: int
    breaches: tuple[Breach, ...] = ()
    observed: dict = field(default_factory=dict)
    workers: int = 1  # the service's workers whose windows it judged (jobs.serving.peers)

    @property
    def breached(self) -> bool:
        return bool(self.breaches)

    def as_json(self) -> dict:
        return {
            "judged": self.judged,
            "n_champion": self.n_champion,
            "n_canary": self.n_canary,
            "workers": self.workers,
            "breaches": [[b.guard, b.observed, b.champion, b.threshold] for b in self.breaches],
            "observed": self.observed,
        }

    @classmethod
    def from_json(cls, d: dict) -> Verdict:
        breaches = tuple(Breach(*b) for b in d["breaches"])
        return cls(d["judged"], d["n_champion"], d["n_canary"], breaches, d["observed"], d["workers"])


def judge(guards: CanaryGuards, champion: ArmStats, canary: ArmStats) -> Verdict:
    """The guards over the two windows (pure). Not judged (no breach) while either arm has fewer than
    ``min_requests`` observations."""
    if min(champion.n, canary.n) < guards.min_requests:
        return Verdict(False, champion.n, canary.n)
    p99 = float(np.percentile(canary.latency_ms, 99)), float(np.percentile(champion.latency_ms, 99))
    err = float(canary.error.mean()), float(champion.error.mean())
    deg = float(canary.degraded.mean()), float(champion.degraded.mean())
    mine, home = canary.score[~np.isnan(canary.score)], champion.score[~np.isnan(champion.score)]
    psi = psi_js(home, mine)[0] if len(mine) and len(home) else math.nan
    observed = {
        "canary_p99_ms": p99[0],
        "champion_p99_ms": p99[1],
        "canary_error_rate": err[0],
        "champion_error_rate": err[1],
        "canary_degraded_rate": deg[0],
        "champion_degraded_rate": deg[1],
        "score_psi": None if math.isnan(psi) else psi,  # None: no scores in one arm (JSON has no NaN)
    }
    out = []
    limit = max(p99[1] * guards.max_p99_ratio, p99[1] + guards.max_p99_excess_ms)
    if p99[0] > limit:
        out.append(Breach("p99_latency", p99[0], p99[1], limit))
    if err[0] - err[1] > guards.max_error_excess:
        out.append(Breach("error_rate", err[0], err[1], err[1] + guards.max_error_excess))
    if deg[0] - deg[1] > guards.max_degraded_excess:
        out.append(Breach("degraded_rate", deg[0], deg[1], deg[1] + guards.max_degraded_excess))
    if not math.isnan(psi) and psi > guards.max_score_psi:
        out.append(Breach("score_psi", psi, None, guards.max_score_psi))
    return Verdict(True, champion.n, canary.n, tuple(out), observed)


class ArmWindows:
    """The last ``window`` observations of each arm, for one challenger version (``reset`` on another)."""

    def __init__(self, window: int):
        self.window = window
        self._lock = threading.Lock()
        self.version: str | None = None
        self.share: float | None = None  # the canary share every observation in the windows was served at
        self._arms = {"champion": deque(maxlen=window), "canary": deque(maxlen=window)}

    def observe(self, arm: str, latency_ms: float, error: bool, degraded: bool, score: float | None) -> None:
        row = (latency_ms, float(error), float(degraded), math.nan if score is None else score, time.time())
        with self._lock:
            self._arms[arm].append(row)

    def observe_many(self, arm: str, latency_ms: float, degraded: list, scores: list, error: bool = False) -> None:
        t, err = time.time(), float(error)
        rows = [(latency_ms, err, float(d), math.nan if s is None else s, t) for d, s in zip(degraded, scores)]
        with self._lock:
            self._arms[arm].extend(rows)

    def reset(self, version: str | None, share: float | None = None) -> None:
        with self._lock:
            self.version, self.share = version, share
            for d in self._arms.values():
                d.clear()

    def stats(self) -> tuple[ArmStats, ArmStats]:
        rows = self.snapshot()[2]
        return ArmStats.of(rows["champion"]), ArmStats.of(rows["canary"])

    def snapshot(self) -> tuple[str | None, float | None, dict[str, np.ndarray]]:
        """(version, share, {arm: its rows as an ``(n, ArmStats.COLUMNS)`` array}), read at once."""
        with self._lock:
            version, share, rows = self.version, self.share, {arm: list(d) for arm, d in self._arms.items()}
        return version, share, {arm: ArmStats.of_rows(r) for arm, r in rows.items()}


def training_age_days(window: tuple[str, str] | None, now: pd.Timestamp) -> float | None:
    """Days from the end of the champion's train range (the last cut-off, 00:00 UTC) to ``now``."""
    if window is None:
        return None
    end = pd.Timestamp(str(window[1])[:10], tz="UTC")
    return (now - end).total_seconds() / 86_400


class GuardMonitor:
    """A daemon thread: ``evaluate()`` every ``every_s`` seconds and ``staleness()`` every
    ``staleness_s`` (both also callable directly). ``active()`` says which challenger version serves
    a canary now (None: none; then nothing is judged); ``on_breach(version, verdict)`` is called once
    per version; ``champion()`` gives (version, train window); ``on_stale(version, age, limit)`` once
    per champion version. ``on_pass(version, share, verdict)``: the guards judged the canary arm at
    ``share`` (the windows' share, all their observations served at it) and found no breach — the
    evidence the ramp advances on; called for the first passing verdict of a (version, share) stage,
    then at most once every ``pass_every_s``; never for a stopped version or a share of 0.

    ``peers`` (``jobs.serving.peers``; None: this process's windows only): judge every worker's
    windows (files rewritten within ``stale_s``, default ``max(5 * every_s, 5)`` s); a breach another
    worker claimed first calls ``on_follow(version, its verdict)`` instead of ``on_breach``."""

    def __init__(
        self,
        guards: CanaryGuards,
        windows: ArmWindows,
        active: Callable[[], str | None],
        on_breach: Callable[[str, Verdict], None],
        *,
        every_s: float = 1.0,
        champion: Callable[[], tuple[str, tuple[str, str] | None]] | None = None,
        max_age_days: float = math.inf,
        on_stale: Callable[[str, float, float], None] | None = None,
        staleness_s: float = 3600.0,
        now: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz="UTC"),
        on_pass: Callable[[str, float, Verdict], None] | None = None,
        pass_every_s: float = 60.0,
        peers: PeerDir | None = None,
        on_follow: Callable[[str, Verdict], None] | None = None,
        stale_s: float | None = None,
    ):
        self.on_pass, self.pass_every_s = on_pass, pass_every_s
        self.peers, self.on_follow = peers, on_follow or (lambda _version, _verdict: None)
        self.stale_s = max(5 * every_s, 5.0) if stale_s is None else float(stale_s)
        self.passed: dict[tuple[str, float], float] = {}  # (version, share) -> monotonic time of the last on_pass
        self.guards, self.windows, self.active, self.on_breach = guards, windows, active, on_breach
        self.every_s, self.staleness_s = every_s, staleness_s
        self.champion, self.max_age_days, self.on_stale, self.now = champion, max_age_days, on_stale, now
        self.stopped: dict[str, Verdict] = {}  # version -> the verdict that stopped it
        self.stale: dict[str, float] = {}  # champion version -> its age when alerted
        self.age_days: float | None = None
        self.last: Verdict | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def evaluate(self) -> Verdict | None:
        with self._lock:
            version = self.active()
            if version is None or version in self.stopped:
                return None
            # the stage these windows hold (compared again below: not reset since)
            held, share, rows = self.windows.snapshot()
            if held != version:  # the windows are another challenger's (reset at install)
                return None
            champion, canary, workers = self._union(version, share, rows)
            verdict = self.last = replace(judge(self.guards, champion, canary), workers=workers)
            name = f"canary-breach-{version}"
            theirs = None if self.peers is None else self.peers.claimed(name)
            if verdict.breached and theirs is None:
                if self.peers is None or self.peers.claim(name, verdict.as_json()):
                    log.error("canary v%s stopped: %s", version, "; ".join(b.describe() for b in verdict.breaches))
                    try:
                        self.on_breach(version, verdict)  # stops it in this process first, then records and alerts
                    finally:
                        self.stopped[version] = verdict
                    return verdict
                theirs = self.peers.claimed(name)  # another worker claimed it first
            if verdict.breached or theirs is not None:
                stop = verdict
                try:
                    stop = verdict if theirs is None else Verdict.from_json(theirs)
                except (KeyError, TypeError, ValueError):  # a claim without its evidence: stopped all the same
                    log.warning("canary v%s: another worker's breach claim has no readable verdict", version)
                log.warning("canary v%s stopped by another worker's guards: %s", version, stop.breaches)
                try:
                    self.on_follow(version, stop)  # in this process only: the claimant recorded and alerted
                finally:
                    self.stopped[version] = stop
                return stop
            if verdict.judged and (self.windows.version, self.windows.share) == (version, share):
                self._passed(version, share, verdict)
            return verdict

    def _union(self, version: str, share: float | None, rows: dict) -> tuple[ArmStats, ArmStats, int]:
        """This worker's windows, with every peer's at the same (version, share) when shared: the last
        ``window`` rows of each arm over all of them, and how many workers they came from."""
        if self.peers is None:
            return ArmStats.of(rows["champion"]), ArmStats.of(rows["canary"]), 1
        try:
            self.peers.publish("guards", {"version": version, "share": share}, rows)
        except OSError as exc:  # the others judge without this worker's samples until the next write
            log.warning("canary guard window not shared with the other workers: %r", exc)
        same = [
            arrays
            for meta, arrays in self.peers.peers("guards", self.stale_s)
            if (meta.get("version"), meta.get("share")) == (version, share)
        ]
        w, c = self.windows.window, ArmStats.COLUMNS
        arms = [ArmStats.of(latest([rows[arm]] + [a[arm] for a in same], w, c)) for arm in ("champion", "canary")]
        return arms[0], arms[1], 1 + len(same)

    def _passed(self, version: str, share: float | None, verdict: Verdict) -> None:
        if self.on_pass is None or not share or share <= 0:
            return
        stage, t = (version, float(share)), time.monotonic()
        last = self.passed.get(stage)
        if last is not None and t - last < self.pass_every_s:
            return
        try:
            self.on_pass(version, float(share), verdict)
        except Exception:  # noqa: BLE001 - no evidence recorded: the ramp holds ("not judged"); retried next time
            log.exception("canary v%s: the passing guard verdict was not recorded", version)
        else:
            self.passed[stage] = t

    def staleness(self) -> float | None:
        if self.champion is None:
            return None
        version, window = self.champion()
        age = self.age_days = training_age_days(window, self.now())
        if age is not None and age > self.max_age_days and version not in self.stale:
            self.stale[version] = age
            if self.on_stale is not None:
                self.on_stale(version, age, self.max_age_days)
        return age

    def start(self) -> GuardMonitor:
        self._thread = threading.Thread(target=self._run, name="lockstep-canary-guards", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_stale = time.monotonic()
        while not self._stop.wait(self.every_s):
            try:
                self.evaluate()
                if time.monotonic() >= next_stale:
                    next_stale = time.monotonic() + self.staleness_s
                    self.staleness()
            except Exception:  # noqa: BLE001 - the monitor must outlive one failed evaluation
                log.exception("canary guard evaluation crashed")
