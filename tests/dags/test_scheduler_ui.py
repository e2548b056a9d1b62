"""The Airflow UI in headless Chromium: log in, open features_daily, start a backfill from the UI's own
dialog, and see its runs listed — then check the runs and partitions really exist."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import ui_support as ui
from e2e_support import FEATURES_DAG, SNAPSHOTS, lake_of, wait_backfill

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(600)]

UI_DAYS = ["1997-01-04"]  # right after the REST backfill's days (depends_on_past)
# A backfill run's id names its run-after instant: the end of the day it processes.
RUN_IDS = [f"backfill__{dt.date.fromisoformat(d) + dt.timedelta(days=1)}" for d in UI_DAYS]


@pytest.fixture
def driver():
    reason = ui.available()
    if reason:
        pytest.skip(reason)
    d = ui.browser()
    yield d
    ui.close(d)


def test_backfill_started_from_the_ui_dialog_runs(scheduler_stack, first_backfill, driver):
    from jobs.local.airflow_local import PASSWORD, USER

    stack = scheduler_stack
    ui.login(driver, stack.url, USER, PASSWORD)
    ui.start_backfill_from_dialog(driver, stack.url, FEATURES_DAG, UI_DAYS[0], UI_DAYS[-1])

    # The dialog called the API: a backfill over exactly those days now exists.
    deadline = time.monotonic() + 60
    backfills = []
    while time.monotonic() < deadline and not backfills:
        backfills = [
            b
            for b in stack.api("GET", "backfills", params={"dag_id": FEATURES_DAG})["backfills"]
            if b["from_date"].startswith(UI_DAYS[0])
        ]
        time.sleep(1)
    assert backfills, "the UI dialog created no backfill"
    wait_backfill(stack, backfills[0]["id"])

    # ...and the runs appear in the UI's own run list.
    from selenium.webdriver.common.by import By

    driver.get(f"{stack.url}/dags/{FEATURES_DAG}/runs")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(r in text for r in RUN_IDS) and "Success" in text:
            break
        time.sleep(2)
        driver.refresh()
    shot = ui.screenshot(driver, "ui_backfill_runs.png")
    assert all(r in text for r in RUN_IDS), text[:2000]
    assert shot.stat().st_size > 10_000

    runs = {r["logical_date"][:10]: r["state"] for r in stack.dag_runs(FEATURES_DAG)}
    assert [runs.get(d) for d in UI_DAYS] == ["success"] * len(UI_DAYS)
    lake = lake_of(stack)
    assert all(lake.table(SNAPSHOTS).exists(d) for d in UI_DAYS)
