"""Driving the Airflow 3 UI with Debian's headless Chromium through selenium (no browser download:
the binary and the driver are /usr/bin/chromium and /usr/bin/chromedriver)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def available() -> str | None:
    """Why the UI test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} missing (apt-get install -y chromium chromium-driver)"
    return None


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lockstep-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    # An explicit driver path: selenium's driver manager is never asked to find (or fetch) one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.implicitly_wait(15)
    driver.lockstep_profile = profile
    return driver


def close(driver) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "lockstep_profile", ""), ignore_errors=True)


def login(driver, url: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/")
    WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda d: "/auth/login" not in d.current_url)


def _click_text(driver, tag: str, text: str, timeout: float = 30):
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for el in driver.find_elements(By.TAG_NAME, tag):
            try:
                if el.is_displayed() and el.text.strip().startswith(text):
                    el.click()
                    return el
            except Exception:  # noqa: BLE001, S112 - stale element while React re-renders: look again
                continue
        time.sleep(0.5)
    raise AssertionError(f"no visible <{tag}> starting with {text!r}")


def _pick_datetime(driver, index: int, day: str) -> None:
    """Fill the index-th "Select date and time" picker of the backfill dialog (UTC)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    pickers = [p for p in driver.find_elements(By.XPATH, "//p[contains(text(),'Select date and time')]")]
    pickers[0 if index == 0 else -1].click()
    time.sleep(0.5)
    date_in = [e for e in driver.find_elements(By.CSS_SELECTOR, "input[placeholder='YYYY/MM/DD']") if e.is_displayed()][
        -1
    ]
    time_in = [e for e in driver.find_elements(By.CSS_SELECTOR, "input[placeholder='HH:mm']") if e.is_displayed()][-1]
    date_in.send_keys(day.replace("-", "/"))
    time_in.send_keys("00:00")
    time_in.send_keys(Keys.ESCAPE)
    time.sleep(0.5)


def start_backfill_from_dialog(
    driver, url: str, dag_id: str, ds_from: str, ds_to: str, reprocess: str = "Missing and Errored Runs"
) -> None:
    """Open the DAG page, Trigger -> Backfill, fill the date range, pick the reprocess behaviour
    (a DAG with depends_on_past tasks refuses "Missing Runs"), Run Backfill."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/dags/{dag_id}")
    driver.find_element(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']").click()
    _click_text(driver, "label", "Backfill")
    _pick_datetime(driver, 0, ds_from)
    _pick_datetime(driver, 1, ds_to)
    _click_text(driver, "label", reprocess)
    time.sleep(1)  # the dialog re-runs its dry run and enables the button
    _click_text(driver, "button", "Run Backfill")


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path
