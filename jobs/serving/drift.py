"""Served-feature drift in the running service: PSI of the features the champion is served against
its training features, alerted when one crosses the model's ``drift_psi``.

The request handler hands every champion-answered feature vector to :meth:`ServedDrift.observe` —
one ``deque.append`` per vector, a bounded window (the last ``window`` vectors of this process).
A thread judges it every ``every_s`` seconds, off the request path, once it holds ``min_rows``
vectors: per feature, the skew job's PSI (``jobs.skew.job.psi_js``: 10 quantile bins of the
training values) of the window against the champion's training features
(``ModelSource.training_features``; read once per champion version, on this thread). A feature at
or above the model's ``drift_psi`` calls ``on_drift(version, {feature: psi})`` once per champion
version and feature (a later crossing of another feature alerts again); the service alerts
(``served drift: <model> v<N>``) and counts it. The nightly skew job judges the whole day's log;
this is the in-flight view of the service's recent traffic. With ``--workers N`` (``peers``,
``jobs.serving.peers``) each worker shares its window at every judgement and judges the last
``window`` vectors over every worker's (by wall-clock time; a peer's as of its own last judgement),
and each (version, feature) alert is claimed by one worker: alerted once for the service.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import repeat

import numpy as np

from jobs.serving.peers import PeerDir, latest
from jobs.skew.job import psi_js

log = logging.getLogger(__name__)


class ServedDrift:
    """See the module docstring. ``champion()``: the champion model serving now; ``reference(model)``:
    its training features (a frame with the feature columns; None: no reference, nothing judged);
    ``peers``: judge every worker's window (files rewritten within ``stale_s``, default
    ``max(3 * every_s, 10)`` s), alert each drifted feature once for all of them."""

    def __init__(
        self,
        names,
        threshold: float,
        champion: Callable[[], object],
        reference: Callable[[object], object],
        on_drift: Callable[[str, dict], None],
        *,
        window: int = 5000,
        min_rows: int = 500,
        every_s: float = 60.0,
        peers: PeerDir | None = None,
        stale_s: float | None = None,
    ):
        self.peers = peers
        self.stale_s = max(3 * every_s, 10.0) if stale_s is None else float(stale_s)
        self.names, self.threshold = list(names), float(threshold)
        self.champion, self.reference, self.on_drift = champion, reference, on_drift
        self.min_rows, self.every_s = int(min_rows), float(every_s)
        self.window = max(1, int(window))
        self._window: deque = deque(maxlen=self.window)  # (wall-clock time, the served vector)
        self._ref: tuple[str, dict | None] | None = None  # (version, {feature: training values})
        self.alerted: set[tuple[str, str]] = set()  # (version, feature) already alerted
        self.last: dict | None = None  # the last judgement: version, rows, psi per feature, drifted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- request side -----------------------------------------------------------------------------
    def observe(self, rows: list[dict]) -> None:
        """Add served feature vectors (champion answers) to the window: appends only."""
        if self.threshold == math.inf:
            return
        self._window.extend(zip(repeat(time.time()), rows))

    def reset(self) -> None:
        """Forget the window (a new champion: its drift is judged on its own traffic)."""
        self._window.clear()

    # ---- judgement --------------------------------------------------------------------------------
    def _reference(self, model) -> dict | None:
        version = str(model.version)
        if self._ref is None or self._ref[0] != version:
            frame = self.reference(model)
            values = None
            if frame is not None and len(frame):
                values = {
                    n: frame[n].to_numpy(dtype=np.float64, na_value=np.nan) for n in self.names if n in frame.columns
                }
            self._ref = (version, values)
        return self._ref[1]

    def judge(self) -> dict | None:
        """PSI per feature of the window now (None: too few rows, or no training reference); alerts
        the features at or above the threshold not alerted yet for this champion version."""
        rows = list(self._window)
        if self.threshold == math.inf or (self.peers is None and len(rows) < self.min_rows):
            return None
        model = self.champion()
        ref = self._reference(model)
        if not ref:
            return None
        version, names = str(model.version), list(ref)
        # one row per served vector: its features in ``names`` order, then the time it was served at
        own = np.array(
            [[np.nan if r.get(n) is None else r[n] for n in names] + [t] for t, r in rows], dtype=np.float64
        ).reshape(-1, len(names) + 1)
        served, workers = self._union(version, names, own)
        if len(served) < self.min_rows:
            return None
        psi = {}
        for i, (n, train) in enumerate(ref.items()):
            value = psi_js(train, served[:, i])[0]
            psi[n] = None if math.isnan(value) else round(value, 6)
        drifted = {n: v for n, v in psi.items() if v is not None and v >= self.threshold}
        self.last = {
            "version": version,
            "rows": len(served),
            "workers": workers,
            "psi": psi,
            "drifted": sorted(drifted),
        }
        new = {n: v for n, v in drifted.items() if (version, n) not in self.alerted}
        if new:
            self.alerted.update((version, n) for n in new)
            if self.peers is not None:  # alerted once for the service: by the worker that claims it
                new = {n: v for n, v in new.items() if self.peers.claim(f"drift-{version}-{n}", {"psi": v})}
            if new:
                self.on_drift(version, new)
        return psi

    def _union(self, version: str, names: list[str], own: np.ndarray) -> tuple[np.ndarray, int]:
        """This worker's vectors, with every peer's served by the same champion version over the same
        features when shared: the last ``window`` of them, and how many workers they came from."""
        if self.peers is None:
            return own, 1
        try:
            self.peers.publish("drift", {"version": version, "names": names}, {"rows": own})
        except OSError as exc:  # the others judge without this worker's vectors until the next write
            log.warning("served drift window not shared with the other workers: %r", exc)
        same = [
            arrays["rows"]
            for meta, arrays in self.peers.peers("drift", self.stale_s)
            if meta.get("version") == version and meta.get("names") == names
        ]
        return latest([own, *same], self.window, len(names) + 1), 1 + len(same)

    # ---- the thread -------------------------------------------------------------------------------
    def start(self) -> ServedDrift:
        if self.every_s > 0 and self.threshold != math.inf:
            self._thread = threading.Thread(target=self._run, name="lockstep-served-drift", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.judge()
            except Exception:  # noqa: BLE001 - drift is informative: it must never stop the service
                log.exception("served drift not judged")
