"""Shadow scoring: the challenger scores every request the champion answered, off the request path.

Two runners share this module's :class:`Shadow` interface, :func:`recover` and the record shapes:
``jobs.serving.shadow_process.ShadowProcess`` (the default, ``Settings.shadow_process``: a child
process at low CPU priority tailing the service's WAL, the request path doing nothing more) and
:class:`ShadowScorer` below (a worker thread of the serving process, for challengers that cannot be
pickled), which the rest of this docstring describes.

While a challenger is installed (the ``challenger`` alias followed by a ``jobs.serving.swap``
follower, or a version named in the settings), the handler, after the champion's record is in the
WAL and the response is built, hands the request's ids, times and the SAME feature vectors the
champion scored to :meth:`ShadowScorer.offer`: one ``put_nowait`` on a bounded queue, never a wait.
One worker thread per service process scores them with the challenger that was installed when they
were offered (a swap mid-queue never mixes versions within one offer); the offers queued when it
takes one (at most ``batch_offers``) go in the same model call, so a backlog costs one call per
batch, not per request and writes one follow-up record
per request (``jobs.serving.log.SHADOW_FIELDS``: ``request_id``, ``request_time``, ``shadow_version``,
``shadow_score``) to the model's shadow WAL (``<model WAL>/shadow``); ``read_wal`` and so the
published ``serving_logs`` partition merge it onto the served row of that ``request_id``.

Nothing is lost silently: a full queue (the challenger is slower than the traffic) drops the offer,
counts it (``dropped``, by reason ``queue_full``; ``log_full`` when the shadow WAL's own queue
refuses the records; ``error`` when the challenger raised) and calls ``on_drop(n, reason)`` — the
service counts ``lockstep_serving_shadow_dropped_total`` and sends a (rate-limited) alert. Those rows
keep a null ``shadow_score``; a drop also writes a marker per request to the shadow WAL
(``shadow_dropped``: the reason; not for ``log_full``, whose queue has no room for it).

A crash (``kill -9``) loses the queue, not the offers: the served row, in the WAL before the 200,
names the challenger it was offered to (``shadow_version``) and carries its feature vector. At
start-up :func:`recover` reads the segments of processes that are gone and re-offers every row
offered to a challenger with neither a shadow record nor a drop marker: scored by the same version
when it is still the installed challenger, else dropped and counted (reason ``crash``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DROP_REASONS = ("queue_full", "log_full", "error", "crash")


class Shadow:
    """What the service holds of a shadow scorer, whichever runs it: :class:`ShadowScorer` (a thread of
    the serving process) or ``jobs.serving.shadow_process.ShadowProcess`` (a process of its own). Both
    offer ``install``/``uninstall``, ``offer``, ``backlog``/``drop``/``flush`` (used by :func:`recover`),
    ``start``/``close``, ``queue_depth`` and ``stopping``; the counters below are what ``/health`` and
    the metrics read."""

    def __init__(self, names, on_drop=None, on_scored=None):
        self.names = list(names)
        self.on_drop, self.on_scored = on_drop, on_scored
        #: the challenger scoring new offers (None: nothing is shadowed); one reference, replaced whole
        self.model = None
        #: what :func:`recover` did at start-up (None: not run)
        self.recovered: dict | None = None
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.scored = 0

    def install(self, model) -> None:
        self.model = model

    def uninstall(self) -> None:
        self.model = None

    @property
    def version(self) -> str | None:
        model = self.model
        return None if model is None else str(model.version)


class ShadowScorer(Shadow):
    """See the module docstring. ``names``: the feature names, in the order both models score them;
    ``writer``: a ``jobs.serving.log.ServingLog`` over the shadow WAL (started by :meth:`start` unless
    running, closed by :meth:`close`); ``score(model, names, rows) -> scores``: one model call per offer."""

    def __init__(
        self,
        names,
        writer,
        score: Callable,
        *,
        queue_size: int = 1000,
        on_drop: Callable[[int, str], None] | None = None,
        on_scored: Callable[[str, int], None] | None = None,
        batch_offers: int = 256,
        linger_s: float = 0.0,
    ):
        super().__init__(names, on_drop, on_scored)
        self.writer, self.score = writer, score
        #: offers the worker takes at once (queued meanwhile): scored in ONE model call per challenger
        self.batch_offers = max(1, int(batch_offers))
        #: after taking an offer, let the offers of this long queue up behind it before scoring them
        #: all in one model call: fewer, larger calls (one LightGBM call's fixed cost, one records
        #: build, one WAL submit per batch instead of per request) and fewer GIL hand-offs with the
        #: event loop, for at most this much more delay of the shadow record (never of a response)
        self.linger_s = max(0.0, float(linger_s))
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._idle = threading.Condition()
        self._pending = 0  # offers queued or being scored, not yet handed to the writer
        self._last_write = None  # the writer's future of the last records handed to it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- request side -----------------------------------------------------------------------------
    def offer(self, request_ids: list, request_times: list, rows: list[dict], model=None) -> bool:
        """Queue the requests for ``model`` (default: the challenger installed now; none: False,
        nothing queued). Never blocks: a full queue drops them (counted, ``on_drop``, a marker per
        request in the shadow WAL) and answers False."""
        model = self.model if model is None else model
        if model is None or not rows:
            return False
        with self._idle:
            try:
                self._queue.put_nowait((model, request_ids, request_times, rows))
            except queue.Full:
                full = True
            else:
                full = False
                self._pending += 1
        if full:
            self.drop(len(rows), "queue_full", model, request_ids, request_times)
            return False
        return True

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def drop(self, n: int, reason: str, model=None, request_ids=(), request_times=()) -> None:
        """Count ``n`` dropped requests (``model``: the model, or version, they were offered to: a
        drop marker per request goes to the shadow WAL)."""
        self.dropped[reason] += n
        if model is not None and reason != "log_full":
            self._mark(model, request_ids, request_times, reason)
        if self.on_drop is not None:
            try:
                self.on_drop(n, reason)
            except Exception:  # noqa: BLE001 - counting or alerting must not fail a request
                log.exception("shadow drop callback failed")

    def _mark(self, model, request_ids, request_times, reason: str) -> None:
        """One ``shadow_dropped`` marker per request in the shadow WAL: a restart does not re-offer it."""
        from jobs.serving.log import LogQueueFull

        markers = drop_markers(str(getattr(model, "version", model)), request_ids, request_times, reason)
        try:
            self.writer.submit_many(markers)
        except (LogQueueFull, RuntimeError):  # counted anyway; a restart re-offers or counts these rows
            log.warning("shadow: no room for %d drop marker(s)", len(markers))

    def backlog(self, request_ids: list, request_times: list, rows: list[dict], model) -> None:
        """Queue a recovered backlog for ``model``, waiting (on the caller's thread, never a request's)
        while the queue is over half full, so live offers keep their room."""
        half = max(1, self._queue.maxsize // 2)
        while self._queue.qsize() >= half and not self._stop.is_set():
            time.sleep(0.01)
        with self._idle:
            self._queue.put((model, request_ids, request_times, rows))
            self._pending += 1

    # ---- the worker -------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """Whether :meth:`close` has begun (a recovery in progress gives up)."""
        return self._stop.is_set()

    def start(self) -> ShadowScorer:
        """Start the shadow WAL's writer (unless running) and the worker thread."""
        if not self.writer.running:
            self.writer.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lockstep-shadow", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if self.linger_s and not self._stop.is_set():
                self._stop.wait(self.linger_s)  # asleep (no GIL): the event loop has the interpreter
            batch = [item]  # what else is queued now: one model call per run of offers to one model
            while len(batch) < self.batch_offers:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for model, group in _runs(batch):
                    ids = [i for _, g, _, _ in group for i in g]
                    times = [t for _, _, g, _ in group for t in g]
                    rows = [r for _, _, _, g in group for r in g]
                    self._score(model, ids, times, rows)
            finally:
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()

    def _score(self, model, request_ids, request_times, rows) -> None:
        from jobs.serving.log import LogQueueFull

        version = str(model.version)
        try:
            scores = self.score(model, self.names, rows)
        except Exception:  # noqa: BLE001 - a failing challenger never touches the served path
            log.exception("shadow model v%s failed on %d row(s)", version, len(rows))
            self.drop(len(rows), "error", model, request_ids, request_times)
            return
        records = shadow_records(version, request_ids, request_times, scores)
        try:
            self._last_write = self.writer.submit_many(records)
        except LogQueueFull:
            self.drop(len(records), "log_full")
            return
        self.scored += len(records)
        if self.on_scored is not None:
            self.on_scored(version, len(records))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every offer queued so far is scored and in the shadow WAL (tests, shutdown):
        True when it got there within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        last = self._last_write
        if last is not None:
            try:
                last.result(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a write error is the writer's (counted there)
                return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Score what is queued (at most ``timeout`` seconds; what is left is dropped, counted), stop
        the worker, close the shadow WAL."""
        if self._thread is None:
            return
        self.flush(timeout)
        while True:
            try:
                model, ids, times, rows = self._queue.get_nowait()
            except queue.Empty:
                break
            with self._idle:
                self._pending -= 1
            self.drop(len(rows), "queue_full", model, ids, times)
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None
        self.writer.close()


def _runs(batch: list) -> list:
    """Consecutive offers to the same model object, in order: ``[(model, [offer, ...]), ...]``."""
    out: list = []
    for item in batch:
        if out and out[-1][0] is item[0]:
            out[-1][1].append(item)
        else:
            out.append((item[0], [item]))
    return out


def micros(t) -> int:
    """A request time as int microseconds UTC (a WAL row's already is)."""
    import pandas as pd

    if isinstance(t, int):  # already microseconds (a recovered WAL row)
        return t
    return int(pd.Timestamp(t).value // 1000)


def shadow_records(version: str, request_ids, request_times, scores) -> list[dict]:
    """The shadow WAL's records of ``version``'s scores (``jobs.serving.log.SHADOW_FIELDS``)."""
    return [
        {"request_id": i, "request_time": micros(t), "shadow_version": version, "shadow_score": float(s)}
        for i, t, s in zip(request_ids, request_times, scores)
    ]


def drop_markers(version: str, request_ids, request_times, reason: str) -> list[dict]:
    """One ``shadow_dropped`` marker per request not shadowed: a restart does not re-offer it."""
    return [
        {"request_id": i, "request_time": micros(t), "shadow_version": version, "shadow_score": None}
        | {"shadow_dropped": reason}
        for i, t in zip(request_ids, request_times)
    ]


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (None: unknown, taken as alive: its segment is left alone)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(
    scorer: ShadowScorer,
    wal_dir,
    current=None,
    *,
    chunk: int = 256,
    alive: Callable[[int | None], bool] = pid_alive,
) -> dict:
    """Re-offer what a crashed process had not shadowed (see the module docstring); runs on its own
    thread at start-up, after the challenger is installed. Reads the served segments of processes
    that are gone and not yet recovered (``current``: this process's own segment; another segment
    with this process's pid is an earlier process's, as in a restarted container); a row offered to a challenger (``shadow_version``) with no
    shadow record and no drop marker is queued for the installed challenger if it is that version
    (:meth:`ShadowScorer.backlog`), else dropped (``crash``: counted, alerted, marked). A segment is
    marked recovered (``<shadow WAL>/recovered/<segment>``) once its rows are scored and written;
    a process that dies mid-recovery leaves only a claim, which the next start takes over (rows
    already re-scored have their shadow record and are not offered twice)."""
    from jobs.serving.log import segment_pid, shadow_wal_dir, wal_records

    wal = Path(wal_dir)
    shadow_dir = shadow_wal_dir(wal)
    done_dir = shadow_dir / "recovered"
    done_dir.mkdir(parents=True, exist_ok=True)
    out = {"segments": 0, "rescored": 0, "lost": 0, "done": False}
    scorer.recovered = out
    todo = []
    for seg in sorted(wal.glob("segment-*.jsonl")):
        pid = segment_pid(seg)
        if seg == current or (done_dir / seg.name).exists() or (pid != os.getpid() and alive(pid)):
            continue
        if _claim(done_dir / f"{seg.name}.claim", alive):
            todo.append(seg)
    if todo:
        settled = {r.get("request_id") for r in wal_records(sorted(shadow_dir.glob("segment-*.jsonl")))}
        for seg in todo:
            rows = [
                r
                for r in wal_records([seg])
                if r.get("shadow_version") is not None
                and r.get("shadow_score") is None
                and r.get("request_id") not in settled
            ]
            model = scorer.model
            mine = [r for r in rows if model is not None and r["shadow_version"] == str(model.version)]
            lost = [r for r in rows if model is None or r["shadow_version"] != str(model.version)]
            for start in range(0, len(mine), chunk):
                part = mine[start : start + chunk]
                ids, times = [r["request_id"] for r in part], [r["request_time"] for r in part]
                scorer.backlog(ids, times, [{n: r.get(n) for n in scorer.names} for r in part], model)
            for version in sorted({r["shadow_version"] for r in lost}):
                part = [r for r in lost if r["shadow_version"] == version]
                scorer.drop(
                    len(part), "crash", version, [r["request_id"] for r in part], [r["request_time"] for r in part]
                )
            while not scorer.flush(timeout=5.0):  # re-scored and written before the segment is marked
                if scorer.stopping:
                    return out
            (done_dir / seg.name).touch()
            (done_dir / f"{seg.name}.claim").unlink(missing_ok=True)
            out["segments"] += 1
            out["rescored"] += len(mine)
            out["lost"] += len(lost)
            if rows:
                log.warning("shadow: %s: %d row(s) re-offered, %d lost (crash)", seg.name, len(mine), len(lost))
    out["done"] = True
    return out


def _claim(path: Path, alive: Callable[[int | None], bool]) -> bool:
    """Take the recovery of one segment: first come, or over a claimer that is gone."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = int(path.read_text() or "0")
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and alive(holder):
                return False
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False
