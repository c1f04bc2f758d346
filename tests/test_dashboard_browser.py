"""The dashboard in a real headless Chromium, against a real `twistd -n numd` and `numd-client`s.

The daemon starts from a database holding 10,000 known clients and a few thousand
values; three `numd-client --connect` processes report live. The test needs Debian's
``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium; it is
skipped, with the reason, only where they are missing outside CI, and fails in CI.

The screenshot is kept at ``<tmp>/dashboard.png`` (the path is printed); with
``NUMD_UPDATE_SCREENSHOT=1`` it is also copied to ``docs/dashboard.png``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from numd.store.batch import Batch
from numd.store.database import Database

from .daemon import ROOT, running_numd, subprocess_env, wait_for_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LIVE_CLIENTS = (1, 2, 3)
KNOWN_CLIENTS = 10_000
TOKEN = "s3cret-token"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported by the skip below
    webdriver = None  # type: ignore[assignment]


def _browser_missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing (apt-get install chromium chromium-driver; .ci/run does it)"
    return None


@pytest.fixture
def browser_or_skip() -> None:
    """Skip with the reason where no browser can be had; in CI a missing browser is a failure."""
    missing = _browser_missing()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the browser test cannot run in CI: {missing}")
    pytest.skip(f"no headless browser here: {missing}")


def prepared_database(path: Path) -> None:
    """A store holding 10,000 clients (the live ones among them) and 3,000 values around 5,500."""
    rng = random.Random(5)
    now = time.time()
    database = Database(str(path))
    batch = Batch()
    for client_id in range(1, KNOWN_CLIENTS + 1):
        batch.client(
            client_id,
            (client_id * 7 % 5000, rng.randrange(100), now - rng.uniform(5, 7200)),
        )
    batch.merge([int(sum(rng.randint(1000, 10_000) for _ in range(3)) / 3) for _ in range(3000)])
    database.write(batch)
    database.close()


def numd_client() -> list[str]:
    """The ``numd-client`` console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "numd-client"
    if script.exists():
        return [str(script)]
    found = shutil.which("numd-client")
    assert found is not None, "numd-client is not installed"
    return [found]


def chrome(directory: Path) -> WebDriver:
    """Headless Chromium from Debian through its chromedriver; nothing is downloaded."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,900",
        f"--user-data-dir={directory}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def wait_for(
    driver: WebDriver, condition: Callable[[], Any], what: str, timeout: float = 10
) -> Any:
    """The first truthy result of `condition`, polled; fails naming `what`."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda _: condition(), message=f"waited {timeout} s for {what}"
    )


def rows(driver: WebDriver) -> dict[int, list[str]]:
    """The client rows drawn in the table: ID -> cell texts."""
    drawn = driver.execute_script(
        "return [...document.querySelectorAll('#rows .row')]"
        ".map(r => [...r.children].map(c => c.textContent));"
    )
    return {int(cells[0]): cells for cells in drawn}


def number(text: str) -> int:
    """A number as the page formats it (1,234)."""
    return int(text.replace(",", "").replace("\u202f", "").replace("\xa0", ""))


def text(driver: WebDriver, element_id: str) -> str:
    """The text of one element."""
    return driver.find_element(By.ID, element_id).text


@pytest.fixture
def live_daemon(tmp_path: Path) -> Iterator[Any]:
    """`twistd -n numd` with the prepared store and an API token, and three live clients."""
    prepared_database(tmp_path / "numd.db")
    (tmp_path / "token").write_text(TOKEN)
    with ExitStack() as stack:
        daemon = stack.enter_context(
            running_numd(
                tmp_path,
                "--db",
                str(tmp_path / "numd.db"),
                "--api-token-file",
                str(tmp_path / "token"),
            )
        )
        wait_for_port(daemon.api_port, daemon.process)
        for client_id in LIVE_CLIENTS:
            log = stack.enter_context(open(tmp_path / f"client-{client_id}.out", "wb"))
            client = subprocess.Popen(
                [
                    *numd_client(),
                    "--server",
                    f"tcp:127.0.0.1:{daemon.port}",
                    "--id",
                    str(client_id),
                    "--connect",
                    "--quiet",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=subprocess_env(),  # this checkout's numd, as the daemon runs it
            )
            stack.callback(_stop, client)
        yield daemon


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("browser_or_skip")
def test_the_dashboard_follows_live_clients_in_a_real_browser(
    tmp_path: Path, live_daemon: Any
) -> None:
    """Rows appear and count up, 10,000 clients scroll, sort and filter, and "add" (with the token) grows the list."""
    base = f"http://127.0.0.1:{live_daemon.api_port}"
    driver = chrome(tmp_path / "chromium-profile")
    try:
        driver.get(base + "/")

        # The live clients' rows appear, connected, and their numbers increase.
        wait_for(
            driver,
            lambda: set(LIVE_CLIENTS) <= set(rows(driver)),
            "the live clients' rows",
        )
        wait_for(
            driver,
            lambda: all(rows(driver)[i][1] == "connected" for i in LIVE_CLIENTS),
            "connected rows",
        )
        before = {i: number(rows(driver)[i][2]) for i in LIVE_CLIENTS}
        wait_for(
            driver,
            lambda: all(number(rows(driver)[i][2]) > before[i] for i in LIVE_CLIENTS),
            "the live clients' numbers to increase",
        )
        assert text(driver, "link") == "live"
        assert number(text(driver, "t-connected")) == len(LIVE_CLIENTS)

        # 10,000 clients: only what fits is drawn, and the last one is a scroll away.
        assert text(driver, "c-count") == "(10,000)"
        assert len(rows(driver)) < 60
        driver.execute_script(
            "const s = document.getElementById('scroller'); s.scrollTop = s.scrollHeight;"
        )
        wait_for(
            driver,
            lambda: KNOWN_CLIENTS in rows(driver),
            "the last client after scrolling down",
        )
        assert len(rows(driver)) < 60
        driver.execute_script("document.getElementById('scroller').scrollTop = 0;")

        # Filter and sort.
        driver.find_element(By.ID, "only-connected").click()
        wait_for(
            driver,
            lambda: text(driver, "c-count") == "(3 of 10,000)",
            "the connected-only filter",
        )
        assert set(rows(driver)) == set(LIVE_CLIENTS)
        driver.find_element(By.ID, "only-connected").click()
        driver.find_element(By.ID, "filter").send_keys("9999")
        wait_for(
            driver,
            lambda: 9999 in rows(driver) and len(rows(driver)) < 20,
            "the text filter",
        )
        driver.find_element(By.ID, "filter").clear()
        driver.execute_script(
            "document.getElementById('filter').dispatchEvent(new Event('input'));"
        )
        driver.find_element(By.CSS_SELECTOR, "[data-sort='number']").click()
        wait_for(
            driver,
            lambda: text(driver, "c-count") == "(10,000)",
            "the filter to be cleared",
        )
        shown = wait_for(
            driver,
            lambda: [number(r[2]) for r in rows(driver).values()],
            "rows sorted by number",
        )
        top = driver.execute_script(
            "return document.querySelector('#rows .row .number').textContent;"
        )
        assert number(top) == max(shown)

        # "Add" needs the token: the page asks for it once, then the list grows.
        size = number(text(driver, "t-size"))
        assert size == 3000
        driver.find_element(By.ID, "add").click()
        wait_for(
            driver,
            lambda: driver.find_element(By.ID, "token-form").is_displayed(),
            "the token prompt",
        )
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#token-form button[type='submit']").click()
        wait_for(
            driver,
            lambda: number(text(driver, "t-size")) == size + 1,
            "the list size to grow by one",
        )
        assert number(text(driver, "l-size")) == size + 1
        assert "Added" in text(driver, "status")
        driver.find_element(By.ID, "add").click()  # the token is remembered for the session
        wait_for(
            driver,
            lambda: number(text(driver, "t-size")) == size + 2,
            "a second add without a prompt",
        )
        assert not driver.find_element(By.ID, "token-form").is_displayed()

        # The screenshot: sorted by ID again, the live clients on top.
        driver.find_element(By.CSS_SELECTOR, "[data-sort='id']").click()
        wait_for(driver, lambda: min(rows(driver)) == 1, "rows sorted by ID")
        time.sleep(1)  # let the bars and the "flash" of updated rows settle
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        if os.environ.get("NUMD_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")

        # "Clear" asks first; cancelling keeps the list, confirming empties it.
        driver.find_element(By.ID, "clear").click()
        assert driver.find_element(By.ID, "confirm").is_displayed()
        assert "3,002" in text(driver, "confirm-text")
        driver.find_element(By.ID, "confirm-no").click()
        assert not driver.find_element(By.ID, "confirm").is_displayed()
        driver.find_element(By.ID, "clear").click()
        driver.find_element(By.ID, "confirm-yes").click()
        wait_for(driver, lambda: text(driver, "t-size") == "0", "the list to be cleared")
        wait_for(
            driver,
            lambda: "the list is empty" in driver.find_element(By.ID, "histogram").text,
            "an empty histogram",
        )
        assert text(driver, "status") == "Cleared 3,002 values."

        # One value is "1 value", not "1 values".
        driver.find_element(By.ID, "add").click()
        wait_for(driver, lambda: text(driver, "t-size") == "1", "one value in the list")
        assert text(driver, "status").endswith("; the list now holds 1 value.")
        driver.find_element(By.ID, "clear").click()
        assert text(driver, "confirm-text").startswith("Clear all 1 value from the list?")
        driver.find_element(By.ID, "confirm-yes").click()
        wait_for(driver, lambda: text(driver, "t-size") == "0", "the list to be cleared again")
        assert text(driver, "status") == "Cleared 1 value."

        # A narrow window: everything stacks, nothing scrolls sideways.
        driver.set_window_size(400, 900)
        wait_for(
            driver,
            lambda: driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth;"
            ),
            "no horizontal overflow at 400 px",
        )
        driver.save_screenshot(str(tmp_path / "dashboard-narrow.png"))
        # The one expected error: the 401 that made the page ask for the token.
        errors = [
            e
            for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "401" not in e["message"]
        ]
        assert errors == [], errors
    finally:
        driver.quit()
    snapshot = json.loads(urllib.request.urlopen(base + "/api/v1/snapshot", timeout=5).read())
    assert snapshot["totals"]["list_size"] == 0
