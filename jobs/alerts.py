"""Alerts that reach people: an alerts log under the lake, e-mail and a chat webhook.

Every alert appends one JSON line to ``<lake>/_alerts/alerts.jsonl`` (or ``$LOCKSTEP_ALERTS_LOG``):
what failed, where, the first lines of the reason, the report and quarantine paths, and how each
channel fared (``delivery``), and its ``level``: ``error`` (something failed) or ``warning``
(nothing failed, worth a look). When configured, it is also sent by e-mail over SMTP and POSTed to a
Slack-compatible webhook (``{"text": ...}``):

====================================  ==============================================
LOCKSTEP_SMTP_HOST / _PORT            SMTP server (port default 25)
LOCKSTEP_SMTP_FROM / _TO              sender; recipients, comma-separated
LOCKSTEP_SMTP_USER / _PASSWORD        login (optional); LOCKSTEP_SMTP_STARTTLS=1 for STARTTLS
LOCKSTEP_WEBHOOK_URL                  Slack incoming webhook or any HTTP endpoint
LOCKSTEP_ALERT_DEDUP_SECONDS          window in which the same failure is not re-sent (3600)
LOCKSTEP_ALERT_TIMEOUT_SECONDS        per-channel network timeout (10)
====================================  ==============================================

The same failure (same dedup key: dataset, partition and failed expectations, or DAG, task and
error) within the window is logged again but not re-sent on a channel that already delivered it.
A channel that fails is recorded in the line's ``delivery`` and never raises: the original error
is what the caller re-raises.

``AirflowNotifier`` (Airflow 3's ``airflow.sdk.BaseNotifier``) is created on first access, so jobs
import this module without Airflow: ``on_failure_callback=AirflowNotifier()``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

log = logging.getLogger(__name__)

ALERTS_DIR = "_alerts"
ALERTS_FILE = "alerts.jsonl"
#: Lines of the reason kept in an alert (the full text is in the report).
REASON_LINES = 15
_TAIL_BYTES = 4 << 20  # how much of the log the dedup check reads


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go. ``from_env`` reads the LOCKSTEP_* variables listed in the module doc."""

    log_path: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "lockstep@localhost"
    smtp_to: tuple[str, ...] = ()
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    webhook_url: str | None = field(default=None, repr=False)  # Slack URLs are secrets
    dedup_window_s: float = 3600.0
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, **overrides: Any) -> AlertSettings:
        env = os.environ

        def get(name: str) -> str | None:
            v = env.get(name, "").strip()
            return v or None

        values: dict[str, Any] = {
            "log_path": get("LOCKSTEP_ALERTS_LOG"),
            "smtp_host": get("LOCKSTEP_SMTP_HOST"),
            "smtp_from": get("LOCKSTEP_SMTP_FROM") or cls.smtp_from,
            "smtp_to": tuple(a.strip() for a in (get("LOCKSTEP_SMTP_TO") or "").split(",") if a.strip()),
            "smtp_user": get("LOCKSTEP_SMTP_USER"),
            "smtp_password": get("LOCKSTEP_SMTP_PASSWORD"),
            "smtp_starttls": (get("LOCKSTEP_SMTP_STARTTLS") or "").lower() in ("1", "true", "yes"),
            "webhook_url": get("LOCKSTEP_WEBHOOK_URL"),
        }
        for var, name, parse in (
            ("LOCKSTEP_SMTP_PORT", "smtp_port", int),
            ("LOCKSTEP_ALERT_DEDUP_SECONDS", "dedup_window_s", float),
            ("LOCKSTEP_ALERT_TIMEOUT_SECONDS", "timeout_s", float),
        ):
            raw = get(var)
            if raw is not None:
                try:
                    values[name] = parse(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not a valid {parse.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("smtp_to"), str):
            values["smtp_to"] = tuple(a.strip() for a in values["smtp_to"].split(",") if a.strip())
        return cls(**values)


@dataclass
class Alert:
    """One thing that failed."""

    title: str
    where: str
    reason: str
    what: str = "failure"
    dataset: str | None = None
    partition: str | None = None
    failed: list[str] = field(default_factory=list)
    report: str | None = None
    quarantine: str | None = None
    source: str = "job"
    details: dict = field(default_factory=dict)
    dedup_key: str = ""
    #: ``error`` (something failed) or ``warning`` (worth a look, nothing failed: e.g. moderate drift).
    level: str = "error"

    def __post_init__(self) -> None:
        if not self.dedup_key:
            basis = (
                [self.what, self.dataset or "", self.partition or "", *sorted(self.failed)]
                if self.failed
                else [self.what, self.where, _first_line(self.reason)]
            )
            self.dedup_key = hashlib.sha256("\x1f".join(basis).encode()).hexdigest()[:16]

    @classmethod
    def from_exception(
        cls, exc: BaseException, *, source: str = "job", where: str | None = None, **details: Any
    ) -> Alert:
        """An alert for ``exc``; a data-quality error (anywhere in the cause chain) gives its own
        fields, so a job's alert and an Airflow callback's for the same failure share a dedup key."""
        dq = _find_alertable(exc)
        if dq is not None:
            f = dq.alert_fields()
            return cls(
                title=f["title"],
                where=f["where"],
                reason=f["reason"],
                what=f["what"],
                dataset=f.get("dataset"),
                partition=f.get("partition"),
                failed=list(f.get("failed") or []),
                report=f.get("report"),
                quarantine=f.get("quarantine"),
                source=source,
                details={k: v for k, v in details.items() if v is not None},
            )
        where = where or "unknown"
        return cls(
            title=f"{type(exc).__name__} in {where}",
            where=where,
            reason=f"{type(exc).__name__}: {exc}",
            what="task failed",
            source=source,
            details={k: v for k, v in details.items() if v is not None},
        )

    def text(self) -> str:
        """The message people read (mail body, chat text)."""
        lines = [("WARNING: " if self.level == "warning" else "") + self.title, f"where: {self.where}"]
        lines += [f"  {ln}" for ln in _head(self.reason)]
        if self.report:
            lines.append(f"report: {self.report}")
        if self.quarantine:
            lines.append(f"quarantined: {self.quarantine}")
        for k, v in self.details.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)


class Notifier:
    """Sends alerts: always to the alerts log, and to e-mail and a webhook when configured."""

    def __init__(
        self, lake_root: str | None = None, settings: AlertSettings | None = None, storage_options: dict | None = None
    ):
        self.settings = settings or AlertSettings.from_env()
        if self.settings.log_path:
            path = self.settings.log_path
        else:
            if lake_root is None:
                from jobs.config import Config

                lake_root = Config.from_env().lake_root
            path = f"{str(lake_root).rstrip('/')}/{ALERTS_DIR}/{ALERTS_FILE}"
        import fsspec

        self.fs, self._path = fsspec.core.url_to_fs(path, **(storage_options or {}))
        self.log_path = path

    @classmethod
    def for_lake(cls, lake, settings: AlertSettings | None = None) -> Notifier:
        return cls(lake.root, settings, lake.storage_options)

    def send_error(self, exc: BaseException, *, source: str = "job", **details: Any) -> dict:
        """``send(Alert.from_exception(exc))``."""
        return self.send(Alert.from_exception(exc, source=source, **details))

    def send(self, alert: Alert) -> dict:
        """Deliver `alert` on every configured channel and append its line to the log; returns the
        line. Never raises for a channel; only a log that cannot be written at all raises."""
        now = dt.datetime.now(dt.UTC)
        with self._locked():
            previous = self._recent(alert.dedup_key, now)
            delivery: dict[str, str] = {}
            for channel, configured, send in (
                ("email", self._email_configured(), self._send_email),
                ("webhook", bool(self.settings.webhook_url), self._send_webhook),
            ):
                if not configured:
                    delivery[channel] = "not configured"
                    continue
                sent_at = previous.get(channel)
                if sent_at:
                    delivery[channel] = f"suppressed: same alert sent at {sent_at}"
                    continue
                try:
                    delivery[channel] = send(alert)
                except Exception as exc:  # noqa: BLE001 - a failing channel must not hide the failure
                    log.warning("alert channel %s failed: %r", channel, exc)
                    delivery[channel] = f"error: {type(exc).__name__}: {exc}"
            line = {
                "at": now.isoformat(timespec="milliseconds"),
                "dedup_key": alert.dedup_key,
                "duplicate_of": previous.get("at"),
                "title": alert.title,
                "level": alert.level,
                "what": alert.what,
                "where": alert.where,
                "dataset": alert.dataset,
                "partition": alert.partition,
                "failed": alert.failed,
                "reason": "\n".join(_head(alert.reason)),
                "report": alert.report,
                "quarantine": alert.quarantine,
                "source": alert.source,
                "details": alert.details,
                "delivery": delivery,
            }
            self._append(json.dumps(line, default=str))
        return line

    def read(self) -> list[dict]:
        """Every alert line of the log."""
        try:
            raw = self.fs.cat_file(self._path)
        except FileNotFoundError:
            return []
        return [json.loads(ln) for ln in raw.decode().splitlines() if ln.strip()]

    # ---- channels -------------------------------------------------------------------------
    def _email_configured(self) -> bool:
        return bool(self.settings.smtp_host and self.settings.smtp_to)

    def _send_email(self, alert: Alert) -> str:
        s = self.settings
        msg = EmailMessage()
        msg["Subject"] = f"[lockstep] {alert.title}"
        msg["From"] = s.smtp_from
        msg["To"] = ", ".join(s.smtp_to)
        msg["X-Lockstep-Dedup-Key"] = alert.dedup_key
        msg.set_content(alert.text() + "\n")
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.timeout_s, local_hostname="lockstep.localdomain") as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
            refused = smtp.send_message(msg)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)
        return f"sent to {', '.join(s.smtp_to)}"

    def _send_webhook(self, alert: Alert) -> str:
        body = json.dumps({"text": alert.text()}).encode()
        req = urllib.request.Request(
            self.settings.webhook_url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
                return f"sent: HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"HTTP {exc.code} {exc.reason}") from None
        except (TimeoutError, urllib.error.URLError) as exc:
            raise RuntimeError(f"cannot reach webhook: {getattr(exc, 'reason', exc)}") from None

    # ---- the log --------------------------------------------------------------------------
    def _recent(self, key: str, now: dt.datetime) -> dict[str, str]:
        """For the latest alerts with `key` inside the window: when each channel last delivered it."""
        window = dt.timedelta(seconds=self.settings.dedup_window_s)
        out: dict[str, str] = {}
        if window.total_seconds() <= 0:
            return out
        for line in reversed(self._tail()):
            if line.get("dedup_key") != key:
                continue
            try:
                at = dt.datetime.fromisoformat(line["at"])
            except (KeyError, ValueError):
                continue
            if now - at > window:
                break
            out.setdefault("at", line.get("duplicate_of") or line["at"])
            for channel, status in (line.get("delivery") or {}).items():
                if str(status).startswith("sent"):
                    out.setdefault(channel, line["at"])
        return out

    def _tail(self) -> list[dict]:
        try:
            size = self.fs.size(self._path)
        except FileNotFoundError:
            return []
        with self.fs.open(self._path, "rb") as fh:
            if size > _TAIL_BYTES:
                fh.seek(size - _TAIL_BYTES)
                fh.readline()  # skip a partial line
            raw = fh.read()
        out = []
        for ln in raw.decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(ln))
        return out

    def _append(self, text: str) -> None:
        parent = self._path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        data = (text + "\n").encode()
        if _is_local(self.fs):
            # One O_APPEND write per line: concurrent writers never interleave within a line.
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        else:  # object stores cannot append: rewrite (alerts are rare and small)
            try:
                old = self.fs.cat_file(self._path)
            except FileNotFoundError:
                old = b""
            self.fs.pipe_file(self._path, old + data)

    @contextlib.contextmanager
    def _locked(self):
        """Serialise check-send-append across processes on a local lake (dedup needs it)."""
        if not _is_local(self.fs):
            yield
            return
        import fcntl

        parent = self._path.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        with open(f"{parent}/.alerts.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def notify_failure(
    exc: BaseException,
    *,
    lake_root: str | None = None,
    source: str = "job",
    settings: AlertSettings | None = None,
    **details: Any,
) -> dict | None:
    """Send an alert for `exc`, swallowing any error of the alerting itself (logged): for
    ``except`` blocks that re-raise `exc` right after."""
    try:
        return Notifier(lake_root, settings).send_error(exc, source=source, **details)
    except Exception as err:  # noqa: BLE001 - the caller re-raises `exc`; this must not replace it
        log.error("could not send the alert for %r: %r", exc, err)
        return None


def alert_from_airflow_context(context: dict) -> Alert:
    """The alert for a failed Airflow task (or DAG run) from its callback context."""
    ti = context.get("task_instance") or context.get("ti")
    dag = context.get("dag")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None) or "?"
    task_id = getattr(ti, "task_id", None)
    where = f"{dag_id}.{task_id}" if task_id else dag_id
    details = {
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": context.get("run_id") or getattr(ti, "run_id", None),
        "logical_date": str(context.get("logical_date") or context.get("ds") or "") or None,
        "try_number": getattr(ti, "try_number", None),
        "log_url": getattr(ti, "log_url", None),
    }
    exc = context.get("exception")
    if exc is None:
        reason = context.get("reason") or "failed (no exception in the callback context)"
        return Alert(
            title=f"{where} failed",
            where=where,
            reason=str(reason),
            what="task failed",
            source="airflow",
            details={k: v for k, v in details.items() if v is not None},
        )
    if not isinstance(exc, BaseException):
        exc = RuntimeError(str(exc))
    return Alert.from_exception(exc, source="airflow", where=where, **details)


def __getattr__(name: str):
    # Airflow is imported only when the notifier class is asked for.
    if name == "AirflowNotifier":
        cls = _airflow_notifier_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _airflow_notifier_class():
    from airflow.sdk import BaseNotifier

    class AirflowNotifier(BaseNotifier):
        """Airflow failure callback: ``on_failure_callback=AirflowNotifier()``.

        ``lake_root`` defaults to ``LOCKSTEP_LAKE``; channels come from the LOCKSTEP_* environment.
        """

        template_fields = ()

        def __init__(self, lake_root: str | None = None, settings: AlertSettings | None = None):
            super().__init__()
            self.lake_root = lake_root
            self.settings = settings

        def notify(self, context) -> None:
            Notifier(self.lake_root, self.settings).send(alert_from_airflow_context(context))

    AirflowNotifier.__module__ = __name__
    AirflowNotifier.__qualname__ = "AirflowNotifier"
    return AirflowNotifier


def _find_alertable(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if callable(getattr(exc, "alert_fields", None)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _head(text: str, n: int = REASON_LINES) -> list[str]:
    lines = str(text).splitlines() or [""]
    return lines[:n] + ([f"... ({len(lines) - n} more lines)"] if len(lines) > n else [])


def _first_line(text: str) -> str:
    return str(text).splitlines()[0] if str(text) else ""


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)
