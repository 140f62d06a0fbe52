"""The storefront demo page (service/routes/demo.py, service/static/demo.html).

The browser tests drive the page in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, through Selenium) against a real service process. Without the browser
they fail, saying how to install it (.ci/run does), unless RECSYS_SKIP_BROWSER=1 asks to
skip them. Screenshots go to $TEST_ARTIFACTS_DIR (default: test-artifacts/, git-ignored).
"""

from __future__ import annotations

import json
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
from tests.conftest import ADMIN_TOKEN, ROOT, V1, V2, V3, service_process
from tests.factories import item_ids, make_bundle_archive, make_bundle_dir

VOCAB = set(item_ids(60))  # the factory bundles' catalog (BundleSpec.n_items)
BROWSER_WAIT_S = 30
READY_TIMEOUT_S = 120  # a loaded CI machine can take a minute to import and warm up
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# v1's manifest metrics as models/compress.py writes them: the served model's own `test_*`
# and the popularity baseline's, whose names sort first (the tab once showed
# popularity_test_hr@10 as v1's metric).
V1_METRICS = {
    "popularity_test_hr@10": 0.0512,
    "popularity_test_ndcg@10": 0.0233,
    "test_hr@10": 0.3125,
    "test_mrr@10": 0.1201,
    "test_ndcg@10": 0.1734,
}
# v2's and v3's as tests/factories.py writes them: test_ndcg@10 and ndcg@10, no HR@10.
V2_NDCG, V3_NDCG = 0.2051, 0.1893


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


@pytest.fixture(scope="module")
def demo_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1 as a directory (with compress-style metrics), v2 and v3 as .tar.gz files."""
    work = tmp_path_factory.mktemp("demo-bundles")
    v1_dir = make_bundle_dir(work / "v1", V1)
    manifest = json.loads((v1_dir / "manifest.json").read_text())
    manifest["metrics"] = V1_METRICS  # the manifest lists the other files' checksums, not its own
    (v1_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    out = {"v1": v1_dir}
    for spec, ndcg in ((V2, V2_NDCG), (V3, V3_NDCG)):
        out[spec.version] = work / f"{spec.version}.tar.gz"
        out[spec.version].write_bytes(make_bundle_archive(work, spec, ndcg=ndcg))
    return out


@pytest.fixture
def demo_service(tmp_path: Path, demo_bundles: dict[str, Path]) -> Iterator[str]:
    """A real service process serving v1, with v2 uploaded (not active) and the admin API."""
    env = {
        "MODEL_DIR": str(tmp_path / "models"),
        "BOOTSTRAP_BUNDLE": str(demo_bundles["v1"]),
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    with service_process(env, ready_timeout_s=READY_TIMEOUT_S) as url:
        r = httpx.post(
            f"{url}/admin/bundles",
            content=demo_bundles["v2"].read_bytes(),
            headers={**ADMIN_HEADERS, "Content-Type": "application/gzip"},
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


def admin_action(driver: WebDriver, css: str) -> None:
    """Click the admin tab's control at `css`; wait until the page has finished that action
    and refreshed the versions (#admin's data-actions counts finished actions)."""

    def finished(d: WebDriver) -> int:
        return int(d.find_element(By.ID, "admin").get_attribute("data-actions") or 0)

    done = finished(driver)
    driver.find_element(By.CSS_SELECTOR, css).click()
    wait_for(driver, lambda d: finished(d) > done, f"the outcome of {css}")


def admin_result(driver: WebDriver) -> str:
    """The success message of the last admin action (failing with the error shown if any)."""
    error = driver.find_element(By.ID, "admin-error")
    assert not error.is_displayed(), error.text
    assert driver.find_element(By.ID, "admin-result").is_displayed()
    return text_of(driver, "admin-result")


def admin_error(driver: WebDriver) -> str:
    """The error message of the last admin action."""
    assert not driver.find_element(By.ID, "admin-result").is_displayed()
    assert driver.find_element(By.ID, "admin-error").is_displayed()
    return text_of(driver, "admin-error")


def row_button(version: str, action: str) -> str:
    return f'#versions tr[data-version="{version}"] button[data-action="{action}"]'


def version_rows(driver: WebDriver) -> dict[str, dict[str, str]]:
    """The versions table: version -> its state, NDCG@10 and HR@10 cells as shown."""
    rows = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, "#versions tbody tr"):
        cells = tr.find_elements(By.TAG_NAME, "td")
        rows[str(tr.get_attribute("data-version"))] = {
            "state": cells[1].text,
            "ndcg@10": tr.find_element(By.CSS_SELECTOR, '[data-metric="ndcg@10"]').text,
            "hr@10": tr.find_element(By.CSS_SELECTOR, '[data-metric="hr@10"]').text,
        }
    return rows


def service_status(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/admin/status", headers=ADMIN_HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    status: dict[str, Any] = r.json()
    return status


def answering_versions(url: str, *, users: int = 40) -> set[str]:
    """The model versions that answer /recommend for `users` distinct user IDs."""
    with httpx.Client(base_url=url, timeout=10) as client:
        versions = set()
        for i in range(users):
            r = client.post("/recommend", json={"history": ["i1"], "k": 3, "user_id": f"u{i}"})
            assert r.status_code == 200, r.text
            versions.add(r.json()["model_version"])
    return versions


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
    browser.find_element(By.CSS_SELECTOR, row_button("v2", "activate")).click()
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


def test_demo_admin_tab_shows_metrics_and_drives_upload_canary_promote_rollback(
    browser: WebDriver, demo_service: str, demo_bundles: dict[str, Path], artifacts_dir: Path
):
    url = demo_service
    # A catalog change first, so the summary has something to show.
    r = httpx.post(
        f"{url}/admin/catalog/unavailable", json={"item_ids": ["i5"]}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 200, r.text
    browser.get(f"{url}/demo")
    browser.find_element(By.ID, "tab-admin").click()
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    admin_action(browser, "#load-versions")

    # Each version's own NDCG@10 and HR@10, under those names; a dash where the manifest has
    # none (v2's, as tests/factories.py writes it, has no HR@10); never popularity's.
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#versions thead th")]
    assert "NDCG@10" in headers and "HR@10" in headers
    assert version_rows(browser) == {
        "v1": {"state": "active", "ndcg@10": "0.1734", "hr@10": "0.3125"},
        "v2": {"state": "installed", "ndcg@10": f"{V2_NDCG:.4f}", "hr@10": "–"},
    }
    assert text_of(browser, "catalog-revision") == "1"
    assert text_of(browser, "catalog-unavailable") == "1"
    assert text_of(browser, "canary-version") == "none"

    # Nothing to roll back to yet: the server's 409 and its detail, on the page.
    admin_action(browser, "#rollback")
    error = admin_error(browser)
    assert "HTTP 409" in error and "there is no previously active version to roll back to" in error
    assert service_status(url)["serving"] == "v1"

    # Upload v3 through the file input: installed, not active.
    browser.find_element(By.ID, "bundle-file").send_keys(str(demo_bundles["v3"]))
    admin_action(browser, "#upload-bundle")
    assert "uploaded v3" in admin_result(browser)
    rows = version_rows(browser)
    assert list(rows) == ["v1", "v2", "v3"]
    assert rows["v3"] == {"state": "installed", "ndcg@10": f"{V3_NDCG:.4f}", "hr@10": "–"}
    assert service_status(url)["serving"] == "v1"
    # The same bundle again: refused, with the server's reason.
    browser.find_element(By.ID, "bundle-file").send_keys(str(demo_bundles["v3"]))
    admin_action(browser, "#upload-bundle")
    error = admin_error(browser)
    assert "HTTP 409" in error and "model version 'v3' is already installed" in error

    # Activate v3: it answers everything.
    admin_action(browser, row_button("v3", "activate"))
    assert "v3 is active" in admin_result(browser)
    assert text_of(browser, "active-version") == "v3"
    assert service_status(url)["serving"] == "v3"
    assert answering_versions(url) == {"v3"}

    # A canary share the server refuses: its validation message is shown, nothing changes.
    percent = browser.find_element(By.ID, "canary-percent")
    percent.clear()
    percent.send_keys("150")
    admin_action(browser, row_button("v2", "canary"))
    error = admin_error(browser)
    assert "HTTP 422" in error and "canary_percent" in error and "less than 100" in error
    assert service_status(url)["canary"] is None

    # Canary v2 on 30%: the status says so, and some users get v2, the rest v3.
    percent.clear()
    percent.send_keys("30")
    admin_action(browser, row_button("v2", "canary"))
    assert "canary v2 answers 30% of traffic" in admin_result(browser)
    status = service_status(url)
    assert (status["serving"], status["canary"], status["canary_percent"]) == ("v3", "v2", 30)
    assert answering_versions(url) == {"v2", "v3"}
    assert text_of(browser, "canary-version") == "v2 (30%)"
    assert version_rows(browser)["v2"]["state"] == "canary 30%"
    browser.save_screenshot(str(artifacts_dir / "demo-admin-canary.png"))

    # Promote: v2 answers everything.
    admin_action(browser, "#promote-canary")
    assert "v2 is active" in admin_result(browser)
    status = service_status(url)
    assert (status["serving"], status["canary"]) == ("v2", None)
    assert answering_versions(url) == {"v2"}
    assert text_of(browser, "active-version") == "v2"

    # Roll back: to v3, the version active before v2.
    admin_action(browser, "#rollback")
    assert "rolled back: v3 is active" in admin_result(browser)
    assert service_status(url)["serving"] == "v3"
    assert answering_versions(url) == {"v3"}
    assert text_of(browser, "active-version") == "v3"

    # Canary v1 on 20%, then abort it: v3 answers everything again.
    percent.clear()
    percent.send_keys("20")
    admin_action(browser, row_button("v1", "canary"))
    assert service_status(url)["canary"] == "v1"
    admin_action(browser, "#abort-canary")
    assert "canary aborted: v3 answers all traffic" in admin_result(browser)
    status = service_status(url)
    assert (status["serving"], status["canary"]) == ("v3", None)
    assert answering_versions(url) == {"v3"}
    assert text_of(browser, "canary-version") == "none"
    # Nothing left to abort: the server's reason.
    admin_action(browser, "#abort-canary")
    assert "no canary is running: nothing to abort" in admin_error(browser)

    # A wrong token: refused with the server's detail, and the table is hidden.
    browser.find_element(By.ID, "token").clear()
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    admin_action(browser, "#load-versions")
    error = admin_error(browser)
    assert "HTTP 403" in error and "admin token is not valid" in error
    assert not browser.find_element(By.ID, "versions-card").is_displayed()
    assert page_errors(browser) == []
