"""Shadow scoring in a process of its own: the service's default (``Settings.shadow_process``).

In-process (:class:`jobs.serving.shadow.ShadowScorer`, ``shadow_process=False``) the challenger's
scoring shares the serving process's interpreter: every batch it builds, scores and writes holds the
GIL the event loop needs, and no thread of a process can be given less CPU than another. Here a
child process does that work at a lower CPU priority (``nice``, default 19: on a saturated machine
it gets what the request path leaves), and the serving process does NOTHING per request beyond what
it already did: the served row it writes to the WAL before the 200 names the challenger it is
offered to (``shadow_version``) and carries the feature vector the champion scored. That row is the
offer. The child tails this process's WAL segments, scores every row offered to a challenger with
that version (one model call per run of rows to one version, at most ``batch_rows``), and writes the
shadow records (``jobs.serving.log.SHADOW_FIELDS``) to the model's shadow WAL with a
``jobs.serving.log.ServingLog`` of its own, exactly as the in-process scorer does; ``read_wal`` and
the published serving log merge them the same way.

The shadow WAL is not fsync'ed (``fsync="never"`` by default, whatever the service's policy): every
shadow record can be made again from the served row it follows, and is: a power loss that takes
shadow records from the page cache leaves served rows offered and unscored, which the next start's
recovery re-offers. (Its CPU is not the reason: fsync'ing in the child measured no different, both
~360 us per request at 300 requests/s in two smoke runs that counted the child's start-up.)

The WAL is the queue: a challenger slower than the traffic, or a child starved of CPU, falls behind
without dropping anything (``queue_full`` never happens here); ``queue_depth`` is its backlog (rows
read and not yet scored, plus the unread bytes at the rows' mean size), the service's
``lockstep_serving_shadow_queue_depth``. Drops are still counted and marked: ``error`` (the
challenger raised, or a row names a version the child was never given), ``crash``, ``log_full``.

Protocol: one socket pair with ``multiprocessing.connection`` framing. Parent -> child:
``("install", version, pickled model)`` (sent BEFORE the version can name a row, so the child,
which reads its messages after each read of the WAL, always has it), ``("rows", version, ids,
times, rows)`` (a recovered backlog, :func:`jobs.serving.shadow.recover`), ``("drop", version, ids,
times, reason)``, ``("flush", token, {segment: size})``, ``("stop",)``. Child -> parent:
``("status", {version: scored}, {reason: dropped}, backlog)`` (deltas) and ``("flushed", token)``.
Models cross as pickles: one that cannot be pickled is refused at install (a ``TypeError`` naming
the setting that keeps the shadow in-process).

Crashes: a thread of the child checks its parent's pid every 50 ms and ends the child at once when
the service is gone (``PR_SET_PDEATHSIG`` would fire when the spawning THREAD ends), so a killed
service leaves no orphan writing shadow records; the restarted service's
:func:`jobs.serving.shadow.recover` re-offers what was not scored, as for the in-process scorer. A
child that dies on its own is started again by the parent, which re-sends its models; the new child
skips the rows whose shadow record is already in the shadow WAL, so nothing is scored twice.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from jobs.serving.shadow import Shadow, drop_markers, shadow_records

log = logging.getLogger(__name__)

#: the versions a parent keeps (and re-sends to a restarted child): rows offered to an older one
#: are scored while it is among these
KEEP_VERSIONS = 4


class ShadowProcess(Shadow):
    """The :class:`jobs.serving.shadow.Shadow` interface over a child process (see the module
    docstring). ``wal_dir``: the model's WAL directory; ``segment()``: the segment this process
    writes now (its first one is where the child starts tailing); ``names``: the feature names in
    the order both models score them. The child starts at the first :meth:`install` (no challenger,
    no process)."""

    def __init__(
        self,
        names,
        wal_dir,
        segment: Callable[[], Path | None],
        *,
        fsync: str = "never",
        poll_s: float = 0.1,
        nice: int = 19,
        batch_rows: int = 4096,
        on_drop: Callable[[int, str], None] | None = None,
        on_scored: Callable[[str, int], None] | None = None,
    ):
        super().__init__(names, on_drop, on_scored)
        self.wal_dir, self.segment = Path(wal_dir), segment
        self.fsync, self.poll_s, self.nice, self.batch_rows = fsync, float(poll_s), int(nice), int(batch_rows)
        #: times the child was started again after dying on its own
        self.restarts = 0
        #: the child has started (imports done, models unpickled) and reported once
        self.ready = False
        self._backlog = 0
        self._blobs: dict[str, bytes] = {}  # version -> pickled model, the last KEEP_VERSIONS installed
        self._first: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._spawn_lock = threading.RLock()
        self._flushed: dict[int, threading.Event] = {}
        self._tokens = itertools.count(1)
        self._started = self._stop = False

    # ---- the challenger ---------------------------------------------------------------------------
    def install(self, model) -> None:
        self._give(model)
        self.model = model  # after the child has it: no row names a version the child lacks

    def _give(self, model) -> None:
        """Send ``model`` to the child (started if need be), kept to re-send to a successor."""
        version = str(model.version)
        try:
            blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - said plainly: the follower counts and logs it
            raise TypeError(
                f"challenger v{version} cannot be pickled for the shadow process ({exc!r}): serve it with "
                "shadow_process=False (LOCKSTEP_SERVING_SHADOW_PROCESS=0) to score it in-process"
            ) from exc
        with self._spawn_lock:
            self._blobs[version] = blob
            while len(self._blobs) > KEEP_VERSIONS:
                self._blobs.pop(next(iter(self._blobs)))
            self._ensure_child()
            self._send(("install", version, blob, self.names))

    @property
    def pid(self) -> int | None:
        """The child's pid (None: not started)."""
        proc = self._proc
        return None if proc is None else proc.pid

    # ---- request side -----------------------------------------------------------------------------
    def offer(self, request_ids: list, request_times: list, rows: list[dict], model=None) -> bool:
        """Nothing to do: the served row in the WAL, naming the challenger, is the offer."""
        return (self.model if model is None else model) is not None and bool(rows)

    @property
    def queue_depth(self) -> int:
        return self._backlog

    def backlog(self, request_ids: list, request_times: list, rows: list[dict], model) -> None:
        """Hand a recovered backlog to the child (blocks while the child's socket is full: the recovery's
        thread, never a request's)."""
        with self._spawn_lock:
            if str(model.version) not in self._blobs:
                self._give(model)  # the child can score it; new rows are still offered to self.model
            self._ensure_child()
            self._send(("rows", str(model.version), list(request_ids), list(request_times), list(rows)))

    def drop(self, n: int, reason: str, model=None, request_ids=(), request_times=()) -> None:
        """Count ``n`` requests as not shadowed: the child marks them in the shadow WAL (``model``: the
        model or version they were offered to) and reports them back, which counts and alerts."""
        version = None if model is None else str(getattr(model, "version", model))
        with self._spawn_lock:
            self._ensure_child()
            self._send(("drop", version, n, list(request_ids), list(request_times), reason))

    # ---- lifecycle --------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop

    def start(self) -> ShadowProcess:
        self._started, self._stop = True, False
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row this process wrote to its WAL so far, and every backlog handed over, is
        scored (or dropped) and in the shadow WAL: True when it got there within ``timeout``."""
        if self._proc is None:
            return True
        token = next(self._tokens)
        done = self._flushed[token] = threading.Event()
        sizes = {}
        for seg in self._segments():
            try:
                sizes[str(seg)] = seg.stat().st_size
            except FileNotFoundError:
                continue
        try:
            self._send(("flush", token, sizes))
            return done.wait(timeout)
        except OSError:
            return False
        finally:
            self._flushed.pop(token, None)

    def close(self, timeout: float = 5.0) -> None:
        """Let the child score what is written (at most ``timeout`` seconds), then stop it; what it has
        not scored stays offered in the WAL (a restart's recovery re-offers it)."""
        if not self._started:
            return
        self.flush(timeout)
        self._stop = True
        proc = self._proc
        if proc is not None:
            try:
                self._send(("stop",))
                proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(timeout)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = self._reader = None
        self._started = False

    # ---- the child ----------------------------------------------------------------------------------
    def _segments(self) -> list[Path]:
        return [] if self._first is None else service_segments(self.wal_dir, os.getpid(), self._first.name)

    def _ensure_child(self) -> None:
        with self._spawn_lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            if self._first is None:
                self._first = self.segment()
            resume = self._proc is not None  # a child died: its successor skips what is already scored
            self.ready = False
            mine, theirs = socket.socketpair()
            argv = [sys.executable, "-m", "jobs.serving.shadow_process", "--fd", str(theirs.fileno())]
            argv += ["--wal", str(self.wal_dir), "--first", self._first.name if self._first else ""]
            argv += ["--parent", str(os.getpid()), "--fsync", self.fsync, "--poll-s", str(self.poll_s)]
            argv += ["--nice", str(self.nice), "--batch-rows", str(self.batch_rows)]
            argv += ["--resume"] if resume else []
            env = dict(os.environ)
            # the parent's import path: a model pickled by reference imports its class in the child too
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            self._proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), env=env, close_fds=True)
            theirs.close()
            self._conn = Connection(mine.detach())
            self._reader = threading.Thread(
                target=self._read, args=(self._conn,), name="lockstep-shadow-reader", daemon=True
            )
            self._reader.start()
            for version, blob in self._blobs.items():  # a successor gets every version it may meet
                if resume:
                    self._send(("install", version, blob, self.names))

    def _send(self, msg) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "status":
                _, scored, dropped, backlog = msg
                self.ready = True
                self._backlog = backlog
                for version, n in scored.items():
                    self.scored += n
                    _call(self.on_scored, version, n)
                for reason, n in dropped.items():
                    self.dropped[reason] += n
                    _call(self.on_drop, n, reason)
            elif msg[0] == "flushed":
                done = self._flushed.get(msg[1])
                if done is not None:
                    done.set()
        conn.close()
        if not self._stop and self._conn is conn:  # died on its own: start a successor
            proc = self._proc
            try:
                code = proc.wait(10)  # its socket closes as it exits: reap it, so a successor is started
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(5)
            log.error("shadow process %s exited (%s): starting another", proc.pid, code)
            self.restarts += 1
            time.sleep(0.5)
            try:
                self._ensure_child()
            except Exception:  # noqa: BLE001 - the next install or flush tries again
                log.exception("shadow process not restarted")


def _call(callback, *args) -> None:
    """A counting or alerting callback: its failure must not stop the reader."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # noqa: BLE001
        log.exception("shadow callback failed")


def service_segments(wal_dir: Path, pid: int, first: str) -> list[Path]:
    """The WAL segments process ``pid`` wrote from segment ``first`` on (an earlier process with the
    same pid, as in a restarted container, wrote older ones), in order: what the child tails."""
    return [p for p in sorted(Path(wal_dir).glob(f"segment-*-{pid}.jsonl")) if p.name >= first]


# ---- the child process ----------------------------------------------------------------------------
class _Child:
    def __init__(self, conn: Connection, args):
        from jobs.serving.log import ServingLog, shadow_wal_dir, wal_records

        self.conn, self.args = conn, args
        self.wal = Path(args.wal)
        self.models: dict = {}
        self.names: list[str] | None = None
        self.offsets: dict[str, int] = {}
        self.pending: list[tuple[str, str, int, dict]] = []  # (version, request_id, request_time, row)
        self.flushes: list[tuple[int, dict]] = []
        self.scored: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.row_bytes = 0.0
        self.inflight = 0
        self.stop = False
        shadow = shadow_wal_dir(self.wal)
        self.settled: set = set()
        if args.resume:  # what a predecessor already scored or marked
            self.settled = {r.get("request_id") for r in wal_records(sorted(shadow.glob("segment-*.jsonl")))}
        self.writer = ServingLog(shadow, None, queue_size=1 << 20, fsync=args.fsync).start()
        self.last_status = 0.0
        self.sent_backlog = None

    # messages
    def drain(self, timeout: float = 0.0) -> None:
        while self.conn.poll(timeout):
            timeout = 0.0
            msg = self.conn.recv()
            kind = msg[0]
            if kind == "install":
                model = pickle.loads(msg[2])
                self.models[msg[1]] = model
                while len(self.models) > KEEP_VERSIONS:
                    self.models.pop(next(iter(self.models)))
                self.names = list(msg[3])
            elif kind == "rows":
                _, version, ids, times, rows = msg
                self.pending += [(version, i, t, r) for i, t, r in zip(ids, times, rows)]
            elif kind == "drop":
                _, version, n, ids, times, reason = msg
                self.drop(version, ids, times, reason, n)
            elif kind == "flush":
                self.flushes.append((msg[1], msg[2]))
            elif kind == "stop":
                self.stop = True

    # the WAL
    def tail(self) -> None:
        import msgspec

        for seg in service_segments(self.wal, self.args.parent, self.args.first):
            key = str(seg)
            offset = self.offsets.get(key, 0)
            with open(seg, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            if not end:
                continue
            self.offsets[key] = offset + end
            lines = data[:end].splitlines()
            self.row_bytes = end / max(len(lines), 1)
            for line in lines:
                if not line:
                    continue
                r = msgspec.json.decode(line)
                version = r.get("shadow_version")
                if version is None or r.get("shadow_score") is not None:
                    continue
                if self.settled and r.get("request_id") in self.settled:
                    continue
                self.pending.append((version, r.get("request_id"), r.get("request_time"), r))

    def backlog(self) -> int:
        """Rows offered and not yet scored: those read (the run being scored included) and the bytes
        not read yet at the rows' mean size."""
        unread = 0
        for seg in service_segments(self.wal, self.args.parent, self.args.first):
            try:
                unread += max(0, seg.stat().st_size - self.offsets.get(str(seg), 0))
            except FileNotFoundError:
                continue
        rows = len(self.pending) + self.inflight
        return rows + (int(unread / self.row_bytes) if self.row_bytes else 0)

    # scoring
    def score(self) -> None:
        from jobs.serving.model import scores_of

        while self.pending:  # a dead service ends this process at once (_watch_parent)
            version = self.pending[0][0]
            n = 0
            while n < len(self.pending) and n < self.args.batch_rows and self.pending[n][0] == version:
                n += 1
            run, self.pending = self.pending[:n], self.pending[n:]
            self.inflight = n
            self.status(force=False)
            ids, times = [r[1] for r in run], [r[2] for r in run]
            model = self.models.get(version)
            if model is None:
                log.error("shadow: %d row(s) name v%s, which this process was never given", n, version)
                self.drop(version, ids, times, "error", n)
                continue
            try:
                scores = scores_of(model, self.names, [r[3] for r in run])
            except Exception:  # noqa: BLE001 - a failing challenger: counted, marked, never retried forever
                log.exception("shadow model v%s failed on %d row(s)", version, n)
                self.drop(version, ids, times, "error", n)
                continue
            self.writer.submit_many(shadow_records(version, ids, times, scores)).result()
            self.scored[version] = self.scored.get(version, 0) + n
        self.inflight = 0

    def drop(self, version, ids, times, reason: str, n: int) -> None:
        """Count ``n`` requests as not shadowed and mark each in the shadow WAL (when a version is known)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        markers = [] if version is None else drop_markers(version, ids, times, reason)
        if markers:
            self.writer.submit_many(markers).result()

    def status(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.last_status < 0.2:
            return
        backlog = self.backlog()
        if self.scored or self.dropped or force or backlog != self.sent_backlog:
            self.conn.send(("status", self.scored, self.dropped, backlog))
            self.scored, self.dropped, self.sent_backlog = {}, {}, backlog
            self.last_status = now

    def answer_flushes(self) -> None:
        if not self.flushes or self.pending:
            return
        left = []
        for token, sizes in self.flushes:
            if all(self.offsets.get(seg, 0) >= size for seg, size in sizes.items()):
                self.status()
                self.conn.send(("flushed", token))
            else:
                left.append((token, sizes))
        self.flushes = left

    def run(self) -> None:
        self.drain()  # the models sent at start, then one status: the parent knows this process is up
        self.status()
        while not self.stop:  # a dead service ends this process at once (_watch_parent)
            self.tail()
            self.drain()  # after the read: an install sent before a row named its version is here now
            self.score()
            self.status(force=False)
            self.answer_flushes()
            self.drain(self.args.poll_s)
        self.writer.close()


def _watch_parent(parent: int, every_s: float = 0.05) -> None:
    """End this process (at once, whatever it is doing) when the service that started it is gone."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="the shadow scorer's child process (started by the service)")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--wal", required=True)
    p.add_argument("--first", default="")
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--fsync", default="never")
    p.add_argument("--poll-s", type=float, default=0.1)
    p.add_argument("--nice", type=int, default=19)
    p.add_argument("--batch-rows", type=int, default=4096)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    threading.Thread(target=_watch_parent, args=(args.parent,), name="parent-watch", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the service stops this process
    if args.nice:
        os.nice(args.nice)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s shadow-process %(levelname)s %(message)s")
    conn = Connection(args.fd)
    try:
        _Child(conn, args).run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0  # the service is gone or closed the socket
    return 0


if __name__ == "__main__":
    sys.exit(main())
