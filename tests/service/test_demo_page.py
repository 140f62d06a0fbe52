"""The storefront demo page (service/routes/demo.py, service/static/demo.html).

The browser tests drive the page in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, through Selenium) against a real service process. Without the browser
they fail, saying how to install it (.ci/run does), unless RECSYS_SKIP_BROWSER=1 asks to
skip them. Screenshots go to $TEST_ARTIFACTS_DIR (default: test-artifacts/, git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from service.settings import Settings
from tests.conftest import ADMIN_TOKEN, ROOT, service_process
from tests.factories import item_ids

VOCAB = set(item_ids(60))  # the factory bundles' catalog (BundleSpec.n_items)
BROWSER_WAIT_S = 30
READY_TIMEOUT_S = 120  # a loaded CI machine can take a minute to import and warm up


# --- the routes, without a browser ----------------------------------------------------------


def test_demo_page_is_one_self_contained_html_file(embedded_client: TestClient):
    r = embedded_client.get("/demo")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    page = r.text
    assert "<script src" not in page and "<link" not in page
    assert "http://" not in page and "https://" not in page  # no CDN, no other origin


def test_demo_samples_come_from_the_serving_vocabulary(embedded_client: TestClient):
    r = embedded_client.get("/demo/samples")
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == "v1"
    histories = [h["history"] for h in body["histories"]]
    assert len(histories) >= 3
    assert all(h and set(h) <= VOCAB and len(set(h)) == len(h) for h in histories[:-1])
    assert histories[-1] == []  # a new visitor: answered from popularity


def test_demo_routes_stay_out_of_the_api_schema(embedded_client: TestClient):
    paths = embedded_client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/demo")]


def test_demo_is_not_served_when_disabled(
    client_for: Callable[[Settings], TestClient], make_settings: Callable[..., Settings], v1_dir
):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, demo_enabled=False))
    assert client.get("/demo").status_code == 404
    assert client.get("/demo/samples").status_code == 404


# --- in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if os.environ.get("RECSYS_SKIP_BROWSER") == "1":
        pytest.skip("RECSYS_SKIP_BROWSER=1: the headless-browser tests are skipped on request")
    chromium = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium")
    driver_path = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not (chromium and Path(chromium).is_file() and driver_path and Path(driver_path).is_file()):
        pytest.fail(
            "the demo page tests need a headless Chromium: `apt-get install -y chromium "
            "chromium-driver` (.ci/run installs them; CHROMIUM_BIN / CHROMEDRIVER point "
            "elsewhere), or set RECSYS_SKIP_BROWSER=1 to skip them"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(BROWSER_WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def demo_service(tmp_path: Path, v1_dir: Path, v2_archive: bytes) -> Iterator[str]:
    """A real service process serving v1, with v2 uploaded (not active) and the admin API."""
    env = {
        "MODEL_DIR": str(tmp_path / "models"),
        "BOOTSTRAP_BUNDLE": str(v1_dir),
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    with service_process(env, ready_timeout_s=READY_TIMEOUT_S) as url:
        r = httpx.post(
            f"{url}/admin/bundles",
            content=v2_archive,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/gzip"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        yield url


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    try:
        return WebDriverWait(driver, BROWSER_WAIT_S, poll_frequency=0.1).until(condition)
    except Exception as e:
        raise AssertionError(f"page never showed {what}: {driver.page_source[-2000:]}") from e


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def visible(element_id: str) -> Callable[[WebDriver], bool]:
    return lambda d: bool(d.find_element(By.ID, element_id).is_displayed())


def run_recommendation(driver: WebDriver, *, answer: int) -> tuple[str, list[str]]:
    """Press Recommend; wait for the page's `answer`-th answer; its version and item IDs."""
    driver.find_element(By.ID, "recommend").click()
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "answer").get_attribute("data-answered") == str(answer),
        f"answer #{answer}",
    )
    items = [
        li.get_attribute("data-item-id")
        for li in driver.find_elements(By.CSS_SELECTOR, "#results li")
    ]
    return text_of(driver, "answer-version"), items


def page_errors(driver: WebDriver) -> list[str]:
    """Console errors other than the HTTP errors the test provokes on purpose."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and e.get("source") != "network"
    ]


def test_demo_page_recommends_and_swaps_versions_in_a_real_browser(
    browser: WebDriver, demo_service: str, artifacts_dir: Path
):
    browser.get(f"{demo_service}/demo")
    wait_for(browser, lambda d: d.find_element(By.ID, "history").get_attribute("value"), "samples")
    history = browser.find_element(By.ID, "history").get_attribute("value").split(", ")
    assert set(history) <= VOCAB

    # Shop: a sample shopper's history, answered by v1 with items of its catalog.
    version, items = run_recommendation(browser, answer=1)
    assert version == "v1"
    assert len(items) == 8 and set(items) <= VOCAB and not set(items) & set(history)
    assert float(text_of(browser, "latency-ms")) > 0
    assert float(text_of(browser, "server-ms")) > 0  # from the Server-Timing header
    assert text_of(browser, "request-id")
    browser.save_screenshot(str(artifacts_dir / "demo-shop-v1.png"))

    # Admin: a wrong token is refused, visibly; the right one lists both versions.
    browser.find_element(By.ID, "tab-admin").click()
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "load-versions").click()
    wait_for(browser, visible("admin-error"), "the 403")
    assert "HTTP 403" in text_of(browser, "admin-error")
    browser.find_element(By.ID, "token").clear()
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "load-versions").click()
    wait_for(browser, visible("versions-card"), "the versions")
    assert not browser.find_element(By.ID, "admin-error").is_displayed()
    assert text_of(browser, "active-version") == "v1"
    rows = browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
    assert [r.get_attribute("data-version") for r in rows] == ["v1", "v2"]

    # Swap to v2 with its button; the page then shows v2 as active.
    browser.find_element(By.CSS_SELECTOR, '#versions tr[data-version="v2"] button').click()
    wait_for(browser, lambda d: text_of(d, "active-version") == "v2", "v2 active")
    browser.save_screenshot(str(artifacts_dir / "demo-admin-v2.png"))
    assert httpx.get(f"{demo_service}/readyz").json()["model_version"] == "v2"

    # Shop: the next answer names the new version.
    browser.find_element(By.ID, "tab-shop").click()
    version, items = run_recommendation(browser, answer=2)
    assert version == "v2"
    assert len(items) == 8 and set(items) <= VOCAB
    browser.save_screenshot(str(artifacts_dir / "demo-shop-v2.png"))
    assert page_errors(browser) == []


def test_demo_page_says_when_the_admin_api_is_disabled(
    browser: WebDriver, tmp_path: Path, v1_dir: Path
):
    env = {"MODEL_DIR": str(tmp_path / "models"), "BOOTSTRAP_BUNDLE": str(v1_dir)}
    with service_process(env, ready_timeout_s=READY_TIMEOUT_S) as url:
        browser.get(f"{url}/demo")
        browser.find_element(By.ID, "tab-admin").click()
        wait_for(browser, visible("admin-disabled"), "the admin API is disabled")
        assert "disabled" in text_of(browser, "admin-disabled")
        assert not browser.find_element(By.ID, "token").is_displayed()
        # The shop works all the same.
        browser.find_element(By.ID, "tab-shop").click()
        version, items = run_recommendation(browser, answer=1)
        assert version == "v1" and set(items) <= VOCAB
        assert page_errors(browser) == []
