"""Shadow scoring: the challenger scores every request the champion answered, off the request path.

While a challenger is installed (the ``challenger`` alias followed by a ``jobs.serving.swap``
follower, or a version named in the settings), the handler, after the champion's record is in the
WAL and the response is built, hands the request's ids, times and the SAME feature vectors the
champion scored to :meth:`ShadowScorer.offer`: one ``put_nowait`` on a bounded queue, never a wait.
One worker thread per service process scores them with the challenger that was installed when they
were offered (a swap mid-queue never mixes versions within one offer) and writes one follow-up record
per request (``jobs.serving.log.SHADOW_FIELDS``: ``request_id``, ``request_time``, ``shadow_version``,
``shadow_score``) to the model's shadow WAL (``<model WAL>/shadow``); ``read_wal`` and so the
published ``serving_logs`` partition merge it onto the served row of that ``request_id``.

Nothing is lost silently: a full queue (the challenger is slower than the traffic) drops the offer,
counts it (``dropped``, by reason ``queue_full``; ``log_full`` when the shadow WAL's own queue
refuses the records; ``error`` when the challenger raised) and calls ``on_drop(n, reason)`` — the
service counts ``lockstep_serving_shadow_dropped_total`` and sends a (rate-limited) alert. Those rows
keep a null ``shadow_score``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DROP_REASONS = ("queue_full", "log_full", "error")


class ShadowScorer:
    """See the module docstring. ``names``: the feature names, in the order both models score them;
    ``writer``: a started ``jobs.serving.log.ServingLog`` over the shadow WAL (closed by :meth:`close`);
    ``score(model, names, rows) -> scores``: one model call per offer."""

    def __init__(
        self,
        names,
        writer,
        score: Callable,
        *,
        queue_size: int = 1000,
        on_drop: Callable[[int, str], None] | None = None,
        on_scored: Callable[[str, int], None] | None = None,
    ):
        self.names, self.writer, self.score = list(names), writer, score
        self.on_drop, self.on_scored = on_drop, on_scored
        #: the challenger scoring new offers (None: nothing is shadowed); one reference, replaced whole
        self.model = None
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.scored = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._idle = threading.Condition()
        self._pending = 0  # offers queued or being scored, not yet handed to the writer
        self._last_write = None  # the writer's future of the last records handed to it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the challenger ---------------------------------------------------------------------------
    def install(self, model) -> None:
        self.model = model

    def uninstall(self) -> None:
        self.model = None

    @property
    def version(self) -> str | None:
        model = self.model
        return None if model is None else str(model.version)

    # ---- request side -----------------------------------------------------------------------------
    def offer(self, request_ids: list, request_times: list, rows: list[dict]) -> bool:
        """Queue the requests for the challenger installed now (none: False, nothing queued). Never
        blocks: a full queue drops them (counted, ``on_drop``) and answers False."""
        model = self.model
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
            self._drop(len(rows), "queue_full")
            return False
        return True

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _drop(self, n: int, reason: str) -> None:
        self.dropped[reason] += n
        if self.on_drop is not None:
            try:
                self.on_drop(n, reason)
            except Exception:  # noqa: BLE001 - counting or alerting must not fail a request
                log.exception("shadow drop callback failed")

    # ---- the worker -------------------------------------------------------------------------------
    def start(self) -> ShadowScorer:
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
            try:
                self._score(*item)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _score(self, model, request_ids, request_times, rows) -> None:
        from jobs.serving.log import LogQueueFull

        version = str(model.version)
        try:
            scores = self.score(model, self.names, rows)
        except Exception:  # noqa: BLE001 - a failing challenger never touches the served path
            log.exception("shadow model v%s failed on %d row(s)", version, len(rows))
            self._drop(len(rows), "error")
            return
        records = [
            {"request_id": i, "request_time": _us(t), "shadow_version": version, "shadow_score": float(s)}
            for i, t, s in zip(request_ids, request_times, scores)
        ]
        try:
            self._last_write = self.writer.submit_many(records)
        except LogQueueFull:
            self._drop(len(records), "log_full")
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
        left = 0
        while True:
            try:
                _, _, _, rows = self._queue.get_nowait()
            except queue.Empty:
                break
            left += len(rows)
            with self._idle:
                self._pending -= 1
        if left:
            self._drop(left, "queue_full")
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None
        self.writer.close()


def _us(t) -> int:
    import pandas as pd

    return int(pd.Timestamp(t).value // 1000)
