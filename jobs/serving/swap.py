"""Following the champion while serving: a promotion or a rollback reaches a running service
without a restart, and without a request ever seeing a half-loaded model.

A :class:`ChampionFollower` owns one daemon thread per service process — with ``--workers N``
every worker runs its own and polls on its own. Every ``poll_s`` seconds
(``LOCKSTEP_SERVING_MODEL_POLL_S``, default 30; 0: no poll) and at once on :meth:`wake` (SIGHUP),
or synchronously in :meth:`reload` (``POST /admin/reload``), it reads which version the champion
alias names (``ModelSource.champion_version``: the alias only, no artifact). Another version than
the one serving is then loaded on the calling thread — never the event loop — and checked
(:func:`check_model`: its lineage fingerprint must be the declared model's ``fingerprint``, its
feature names the model's):

* it passes: ``install(model)`` swaps it in (the service assigns ONE reference to an immutable
  predictor built around it; a request reads that reference once, so it is scored, logged and
  answered by one version), then ``on_swap(previous, version, rollback)``. ``rollback`` is true when
  the alias moved to an OLDER version (a lower version number), as ``lockstep model rollback`` does.
* it fails: the old version keeps serving, ``on_refused(version, error)`` alerts and counts once,
  and that version is not loaded again while the alias names it (the next polls do nothing).
* the alias cannot be read or the version not loaded: ``on_error(version, exc)``, the old version
  keeps serving and the next poll tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class FingerprintMismatchError(ValueError):
    """A model trained on other feature-set versions (``kind`` ``fingerprint``) or on other features
    (``feature_names``) than the declared model joins: never served."""

    def __init__(self, message: str, kind: str = "fingerprint"):
        super().__init__(message)
        self.kind = kind


def check_model(model, decl) -> None:
    """Raise :class:`FingerprintMismatchError` unless ``model`` was trained for ``decl`` as declared now."""
    fp = getattr(model, "feature_set_fingerprint", None)
    if fp != decl.fingerprint:
        raise FingerprintMismatchError(
            f"model {model.name} v{model.version} was trained on features {fp}, but model {decl.name!r} "
            f"declares {decl.fingerprint}: serve a version trained on the current feature sets",
            "fingerprint",
        )
    if tuple(model.feature_names) != tuple(decl.feature_names):
        raise FingerprintMismatchError(
            f"model {model.name} v{model.version} expects features {list(model.feature_names)}, "
            f"model {decl.name!r} joins {list(decl.feature_names)}",
            "feature_names",
        )


@dataclass(frozen=True)
class Outcome:
    """What one check of the champion alias did."""

    status: str  # swapped | unchanged | refused | error
    serving: str  # the version serving after the check
    version: str | None = None  # the version the alias names (None: no champion, or unreadable)
    previous: str | None = None  # swapped: the version it replaced
    rollback: bool = False  # swapped to an older version
    reason: str | None = None  # refused / error: why


def is_older(version: str, than: str) -> bool:
    """Version numbers compared as numbers (registry versions); anything else is never older."""
    try:
        return int(version) < int(than)
    except (TypeError, ValueError):
        return False


class ChampionFollower:
    """See the module docstring. ``source``: a ``jobs.serving.model.ModelSource``; ``serving``: the
    version serving at start-up (None: none yet); ``check(model)`` raises
    :class:`FingerprintMismatchError` to refuse. ``alias`` names what is followed (logs, thread);
    ``read()`` says which version it names now (default ``source.champion_version``); ``uninstall``:
    called when it names none while one is installed (without it, no alias keeps the served one)."""

    def __init__(
        self,
        source,
        name: str,
        serving: str | None,
        check: Callable[[object], None],
        install: Callable[[object], None],
        *,
        poll_s: float = 30.0,
        on_swap: Callable[[str, str, bool], None] | None = None,
        on_refused: Callable[[str, FingerprintMismatchError], None] | None = None,
        on_error: Callable[[str | None, BaseException], None] | None = None,
        alias: str = "champion",
        read: Callable[[], str | None] | None = None,
        uninstall: Callable[[], None] | None = None,
    ):
        self.source, self.name = source, name
        self.serving = None if serving is None else str(serving)
        self.alias, self.read, self.uninstall = alias, read or source.champion_version, uninstall
        self.check, self.install, self.poll_s = check, install, float(poll_s)
        self.on_swap, self.on_refused, self.on_error = on_swap, on_refused, on_error
        self.refused: tuple[str, str] | None = None  # (version, reason) the alias names and was refused
        self.checked_at: float | None = None  # wall-clock time of the last read of the alias
        self.swap_seconds: float | None = None  # how long the last swap's check took (alias, load, check)
        self.checks = self.swaps = self.errors = 0
        self._lock = threading.Lock()  # one check at a time (poll thread, admin call)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def reload(self) -> Outcome:
        """Check the alias now and swap if it moved (blocking: call it off the event loop)."""
        with self._lock:
            return self._reload()

    def _reload(self) -> Outcome:
        t0 = time.perf_counter()
        self.checked_at = time.time()
        self.checks += 1
        try:
            version = self.read()
        except Exception as exc:  # noqa: BLE001 - an unreachable registry must not stop serving
            return self._error(None, exc)
        if version is None and self.uninstall is not None:
            self.refused = None
            if self.serving is None:
                return Outcome("unchanged", None, None, reason=f"no {self.alias} alias")
            previous, self.serving = self.serving, None
            self.uninstall()
            log.warning("model %s: %s v%s no longer named: dropped", self.name, self.alias, previous)
            return Outcome("swapped", None, None, previous=previous, reason=f"no {self.alias} alias")
        if version is None:
            return Outcome("unchanged", self.serving, None, reason="no champion alias: the served version stays")
        version = str(version)
        if version == self.serving:
            self.refused = None
            return Outcome("unchanged", self.serving, version)
        if self.refused is not None and self.refused[0] == version:
            return Outcome("refused", self.serving, version, reason=self.refused[1])
        try:
            model = self.source.load(self.name, version)
        except Exception as exc:  # noqa: BLE001 - a version that does not load is retried next time
            return self._error(version, exc)
        try:
            self.check(model)
        except FingerprintMismatchError as exc:
            self.refused = (version, str(exc))
            log.error("model %s: %s v%s refused, v%s stays: %s", self.name, self.alias, version, self.serving, exc)
            if self.uninstall is not None and self.serving is not None:
                # a followed alias (the challenger) that names a refused version follows nothing: the
                # version it named before is not what is under test any more
                self.serving = None
                self.uninstall()
            if self.on_refused is not None:
                self.on_refused(version, exc)
            return Outcome("refused", self.serving, version, reason=str(exc))
        previous, rollback = self.serving, is_older(version, self.serving)
        try:
            self.install(model)
        except Exception as exc:  # noqa: BLE001 - e.g. a challenger the shadow process cannot take: retried
            return self._error(version, exc)
        self.swap_seconds = time.perf_counter() - t0
        self.serving, self.refused = version, None
        self.swaps += 1
        log.warning(
            "model %s %s: v%s -> v%s%s", self.name, self.alias, previous, version, " (rollback)" if rollback else ""
        )
        if self.on_swap is not None:
            self.on_swap(previous, version, rollback)
        return Outcome("swapped", version, version, previous=previous, rollback=rollback)

    def _error(self, version: str | None, exc: BaseException) -> Outcome:
        self.errors += 1
        log.warning("model %s: %s check failed, v%s stays: %r", self.name, self.alias, self.serving, exc)
        if self.on_error is not None:
            self.on_error(version, exc)
        return Outcome("error", self.serving, version, reason=f"{type(exc).__name__}: {exc}")

    # ---- the thread -----------------------------------------------------------------------------
    def start(self) -> ChampionFollower:
        self._thread = threading.Thread(target=self._run, name=f"lockstep-{self.alias}-follower", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Check at once on the follower's thread (safe from a signal handler: it only sets an event)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        # fixed rate: a poll starts at most poll_s after the previous one started (unless that one took
        # longer), so an alias move is seen within one interval
        next_at = time.monotonic() + self.poll_s
        while not self._stop.is_set():
            timeout = None if self.poll_s <= 0 else max(0.0, next_at - time.monotonic())
            woken = self._wake.wait(timeout)
            if self._stop.is_set():
                return
            self._wake.clear()
            if not woken:
                next_at = max(next_at + self.poll_s, time.monotonic())
            try:
                self.reload()
            except Exception:  # noqa: BLE001 - the follower must outlive any one failed check
                log.exception("model %s: %s check crashed", self.name, self.alias)
