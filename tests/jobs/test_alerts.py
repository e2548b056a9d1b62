"""Alerts reach real receivers started here: an SMTP server (aiosmtpd) and an HTTP webhook; the
same failure is not re-sent within the window; a receiver that is down hides nothing."""

import email
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_validate_support import alerts, land, raw_day

from jobs.alerts import Alert, AlertSettings, Notifier, alert_from_airflow_context
from jobs.quality.validate import DataQualityError, validate_partition

pytest_plugins = ["test_validate_support"]  # fixtures: cdnow, cfg, history, clean_alert_env
pytestmark = pytest.mark.usefixtures("clean_alert_env")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")

    class Inbox:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(
                (envelope.mail_from, list(envelope.rcpt_tos), email.message_from_bytes(envelope.content))
            )
            return "250 Message accepted"

    inbox = Inbox()
    controller = aiosmtpd.Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox.messages
    finally:
        controller.stop()


@pytest.fixture
def webhook_server():
    received, status = [], {"code": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(status["code"])
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/lockstep", received, status
    finally:
        server.shutdown()
        server.server_close()


def settings(smtp_port=None, webhook=None, **kw):
    return AlertSettings(
        **{
            "smtp_host": "127.0.0.1" if smtp_port else None,
            "smtp_port": smtp_port or 25,
            "smtp_from": "lockstep@test.invalid",
            "webhook_url": webhook,
            "timeout_s": 5,
            "smtp_to": ("oncall@test.invalid", "data@test.invalid"),
            **kw,
        }
    )


def failing_partition(cfg, cdnow, ds="1997-01-01"):
    df = raw_day(cdnow, ds)
    df.loc[[0, 1], "amount"] = [-10.0, -20.0]
    land(cfg, ds, df)


def test_a_data_quality_failure_reaches_mail_and_webhook(cfg, cdnow, smtp_server, webhook_server):
    port, inbox = smtp_server
    url, received, _ = webhook_server
    failing_partition(cfg, cdnow)
    notifier = Notifier(cfg.lake_root, settings(port, url))
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", "1997-01-01", notifier=notifier)
    err = info.value
    ((sender, rcpts, msg),) = inbox
    assert sender == "lockstep@test.invalid" and rcpts == ["oncall@test.invalid", "data@test.invalid"]
    subject = " ".join(str(msg["Subject"]).split())  # a long subject is folded
    assert subject == "[lockstep] data quality failed: raw_events raw_events/cdnow_purchases/ds=1997-01-01"
    body = msg.get_payload(decode=True).decode()
    assert "expect_column_values_to_be_between(column=amount" in body and "2 of" in body
    assert f"report: {err.report_path}" in body and f"quarantined: {err.quarantine_path}" in body
    ((path, ctype, payload),) = received
    assert path == "/hooks/lockstep" and ctype == "application/json"
    assert payload["text"].startswith("data quality failed: raw_events raw_events/cdnow_purchases/ds=1997-01-01")
    assert err.report_path in payload["text"]
    (line,) = alerts(cfg)
    assert line["delivery"] == {"email": "sent to oncall@test.invalid, data@test.invalid", "webhook": "sent: HTTP 200"}
    assert line["report"] == err.report_path and line["quarantine"] == err.quarantine_path


def test_the_same_failure_is_not_resent_within_the_window(cfg, smtp_server, webhook_server):
    port, inbox = smtp_server
    url, received, _ = webhook_server
    notifier = Notifier(cfg.lake_root, settings(port, url, dedup_window_s=3600))
    alert = Alert(
        title="data quality failed: raw_events ds=1997-01-01",
        where="raw_events/ds=1997-01-01",
        reason="amounts are negative",
        dataset="raw_events",
        partition="raw_events/ds=1997-01-01",
        failed=["expect_column_values_to_be_between(column=amount)"],
    )
    first = notifier.send(alert)
    second = notifier.send(Alert(**{**alert.__dict__, "dedup_key": ""}))  # an equal, separate alert
    other = notifier.send(Alert(**{**alert.__dict__, "dedup_key": "", "partition": "raw_events/ds=1997-01-02"}))
    assert len(inbox) == 2 and len(received) == 2  # the first and the other partition's
    assert second["dedup_key"] == first["dedup_key"] != other["dedup_key"]
    assert second["duplicate_of"] == first["at"]
    assert second["delivery"]["email"].startswith("suppressed: same alert sent at")
    assert [a["dedup_key"] for a in alerts(cfg)] == [first["dedup_key"]] * 2 + [other["dedup_key"]]
    # outside the window it goes out again
    later = Notifier(cfg.lake_root, settings(port, url, dedup_window_s=0.2))
    time.sleep(0.3)
    assert later.send(alert)["delivery"]["webhook"] == "sent: HTTP 200" and len(received) == 3


def test_a_channel_that_failed_is_retried_by_the_next_duplicate(cfg, webhook_server):
    url, received, status = webhook_server
    notifier = Notifier(cfg.lake_root, settings(webhook=url))
    alert = Alert(title="t", where="w", reason="r")
    status["code"] = 500
    assert notifier.send(alert)["delivery"]["webhook"] == "error: RuntimeError: HTTP 500 Internal Server Error"
    status["code"] = 200
    assert notifier.send(alert)["delivery"]["webhook"] == "sent: HTTP 200"
    assert len(received) == 2


def test_receivers_that_are_down_do_not_mask_the_data_error(cfg, cdnow):
    dead = free_port()  # nothing listens there
    failing_partition(cfg, cdnow)
    notifier = Notifier(cfg.lake_root, settings(dead, f"http://127.0.0.1:{dead}/hook", timeout_s=2))
    with pytest.raises(DataQualityError, match="expect_column_values_to_be_between"):
        validate_partition(cfg, "raw_events", "1997-01-01", notifier=notifier)
    (line,) = alerts(cfg)
    assert line["delivery"]["email"].startswith("error: ConnectionRefusedError")
    assert line["delivery"]["webhook"].startswith("error: RuntimeError: cannot reach webhook")
    assert line["partition"] == "raw_events/cdnow_purchases/ds=1997-01-01" and "2 of" in line["reason"]


def test_alert_lines_keep_only_the_first_lines_of_the_reason(cfg):
    reason = "\n".join(f"line {i}" for i in range(40))
    line = Notifier(cfg.lake_root, settings()).send(Alert(title="t", where="w", reason=reason))
    assert line["reason"].splitlines()[:15] == [f"line {i}" for i in range(15)]
    assert line["reason"].splitlines()[-1] == "... (25 more lines)"
    assert line["delivery"] == {"email": "not configured", "webhook": "not configured"}


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCKSTEP_SMTP_HOST", "mail.example")
    monkeypatch.setenv("LOCKSTEP_SMTP_PORT", "2525")
    monkeypatch.setenv("LOCKSTEP_SMTP_TO", "a@x, b@y")
    monkeypatch.setenv("LOCKSTEP_WEBHOOK_URL", "https://hooks.example/T0/B0/secret")
    monkeypatch.setenv("LOCKSTEP_ALERT_DEDUP_SECONDS", "60")
    monkeypatch.setenv("LOCKSTEP_ALERTS_LOG", str(tmp_path / "alerts.log"))
    s = AlertSettings.from_env()
    assert (s.smtp_host, s.smtp_port, s.smtp_to, s.dedup_window_s) == ("mail.example", 2525, ("a@x", "b@y"), 60.0)
    assert "secret" not in repr(s)
    assert Notifier("/elsewhere", s).log_path == str(tmp_path / "alerts.log")
    monkeypatch.setenv("LOCKSTEP_SMTP_PORT", "smtp")
    with pytest.raises(ValueError, match="LOCKSTEP_SMTP_PORT"):
        AlertSettings.from_env()


def test_alerts_import_without_airflow():
    code = (
        "import sys, jobs.alerts, jobs.quality.validate; "
        "print(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_airflow_failure_callback_alerts_with_the_jobs_dedup_key(cfg, cdnow, webhook_server):
    from airflow.sdk.bases.notifier import BaseNotifier
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.alerts import AirflowNotifier

    url, received, _ = webhook_server
    failing_partition(cfg, cdnow)
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", "1997-01-01", notifier=Notifier(cfg.lake_root, settings(webhook=url)))
    try:  # what jobs.orchestration.data_quality_gate raises in the task
        raise AirflowFailException(f"data quality failed: {info.value}") from info.value
    except AirflowFailException as exc:
        wrapped = exc

    class TI:
        dag_id, task_id, run_id, try_number = "features_daily", "validate_raw", "scheduled__1997-01-01", 1
        log_url = "http://airflow.local/log"

    notifier = AirflowNotifier(lake_root=cfg.lake_root, settings=settings(webhook=url))
    assert isinstance(notifier, BaseNotifier)
    notifier({"task_instance": TI(), "exception": wrapped, "logical_date": "1997-01-01"})
    job_line, airflow_line = alerts(cfg)
    assert airflow_line["source"] == "airflow" and airflow_line["dedup_key"] == job_line["dedup_key"]
    assert airflow_line["delivery"]["webhook"].startswith("suppressed")  # the job already said it
    assert len(received) == 1
    assert airflow_line["details"]["dag_id"] == "features_daily"
    assert airflow_line["details"]["task_id"] == "validate_raw"


def test_airflow_callback_for_an_ordinary_failure(cfg):
    class TI:
        dag_id, task_id, run_id = "training", "train", "manual__x"

    alert = alert_from_airflow_context({"ti": TI(), "exception": KeyError("model")})
    assert alert.title == "KeyError in training.train" and alert.where == "training.train"
    assert alert.reason == "KeyError: 'model'" and alert.source == "airflow"
    assert alert_from_airflow_context({"ti": TI()}).title == "training.train failed"
