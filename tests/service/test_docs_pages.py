"""The API reference pages (service/routes/docs.py): /docs (Swagger UI) and /redoc work with
no other origin reachable, their assets served by the service from a pinned package.

The browser tests load both pages in a real headless Chromium (the fixture of
test_demo_page.py) against a real service process, and check that the UI rendered the
operations and that the browser asked nothing of another origin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from service.routes.docs import ASSETS, ASSETS_PATH
from tests.conftest import ADMIN_TOKEN, service_process
from tests.service.test_demo_page import (  # the headless Chromium, shared
    READY_TIMEOUT_S,
    artifacts_dir,  # noqa: F401
    browser,  # noqa: F401
    wait_for,
)

PAGES = ("/docs", "/redoc")


# --- the routes, without a browser ----------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_docs_pages_load_their_assets_from_this_service_only(
    embedded_client: TestClient, path: str
):
    r = embedded_client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, no Google Fonts
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "script-src 'self' 'unsafe-inline';" in csp  # no other origin may serve a script


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_docs_assets_are_served_from_the_pinned_package(embedded_client: TestClient, name: str):
    r = embedded_client.get(f"{ASSETS_PATH}/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == ASSETS[name][1].split(";")[0]
    assert len(r.content) > 500
    assert "max-age" in r.headers["cache-control"]


@pytest.mark.parametrize(
    "name", ["../standalone_docs.py", "__init__.py", "logo-mini.svg", "%2e%2e%2f__init__.py"]
)
def test_only_the_listed_docs_assets_are_served(embedded_client: TestClient, name: str):
    assert embedded_client.get(f"{ASSETS_PATH}/{name}").status_code == 404


def test_docs_pages_stay_out_of_the_api_schema(embedded_client: TestClient):
    paths = embedded_client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


# --- in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_service(tmp_path_factory: pytest.TempPathFactory, v1_dir: Path) -> Iterator[str]:
    env = {
        "MODEL_DIR": str(tmp_path_factory.mktemp("docs-models")),
        "BOOTSTRAP_BUNDLE": str(v1_dir),
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    with service_process(env, ready_timeout_s=READY_TIMEOUT_S) as url:
        yield url


def loaded_urls(driver: WebDriver) -> list[str]:
    """Every URL the page loaded or points to: the document, each resource the browser's
    Resource Timing recorded (scripts, styles, images, the schema's fetch), and the `src` or
    `href` of every script, stylesheet, icon and image in the DOM. Inline ones (data:,
    blob:) are left out."""
    urls: list[Any] = driver.execute_script(
        "return [location.href]"
        ".concat(performance.getEntriesByType('resource').map(e => e.name))"
        ".concat(Array.from(document.querySelectorAll('script[src], link[href], img[src]'))"
        ".map(e => e.src || e.href))"
    )
    return [str(u) for u in urls if urlsplit(str(u)).scheme not in ("data", "blob", "about")]


def foreign(urls: list[str], service_url: str) -> list[str]:
    own = urlsplit(service_url).netloc
    return [u for u in urls if urlsplit(u).netloc != own]


def console_errors(driver: WebDriver) -> list[str]:
    """Every console error, Content-Security-Policy violations included."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def try_it_out(driver: WebDriver, operation_id: str) -> WebElement:
    """Open an operation of Swagger UI and press its "Try it out"."""
    op = driver.find_element(By.ID, operation_id)
    op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait_for(driver, lambda d: op.find_elements(By.CSS_SELECTOR, ".try-out__btn"), "Try it out")
    op.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    return op


def test_swagger_ui_renders_every_operation_without_another_origin(
    browser: WebDriver,  # noqa: F811
    docs_service: str,
    artifacts_dir: Path,  # noqa: F811
):
    browser.get_log("browser")  # drop what earlier tests left
    browser.get(f"{docs_service}/docs")
    recommend = wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, '.opblock-post [data-path="/recommend"]'),
        "the POST /recommend operation",
    )
    assert recommend
    paths = {
        e.get_attribute("data-path")
        for e in browser.find_elements(By.CSS_SELECTOR, ".opblock [data-path]")
    }
    assert {"/recommend", "/readyz", "/admin/bundles", "/admin/activate"} <= paths

    # "Try it out" on /recommend sends the documented example and shows the answer.
    op = try_it_out(browser, "operations-recommend-recommend_recommend_post")
    op.find_element(By.CSS_SELECTOR, ".execute").click()
    status = wait_for(
        browser,
        lambda d: op.find_elements(
            By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"
        ),
        "the answer",
    )
    assert status[0].text.strip() == "200"
    assert '"model_version": "v1"' in op.find_element(By.CSS_SELECTOR, ".live-responses-table").text

    # The upload documents its body: "Try it out" offers a file to send.
    upload = try_it_out(browser, "operations-admin-upload_bundle_admin_bundles_post")
    wait_for(
        browser,
        lambda d: upload.find_elements(By.CSS_SELECTOR, 'input[type="file"]'),
        "a file input for the bundle",
    )
    browser.save_screenshot(str(artifacts_dir / "docs-swagger-ui.png"))

    urls = loaded_urls(browser)
    assert f"{docs_service}{ASSETS_PATH}/swagger-ui-bundle.js" in urls
    assert f"{docs_service}/openapi.json" in urls
    assert foreign(urls, docs_service) == []
    assert console_errors(browser) == []


def test_redoc_renders_every_operation_without_another_origin(
    browser: WebDriver,  # noqa: F811
    docs_service: str,
    artifacts_dir: Path,  # noqa: F811
):
    browser.get_log("browser")
    browser.get(f"{docs_service}/redoc")
    wait_for(
        browser,
        lambda d: d.find_elements(
            By.CSS_SELECTOR, '[data-section-id="operation/recommend_recommend_post"]'
        ),
        "the POST /recommend operation",
    )
    assert "Recommend items for a browsing history" in browser.page_source
    browser.save_screenshot(str(artifacts_dir / "docs-redoc.png"))

    urls = loaded_urls(browser)
    assert f"{docs_service}{ASSETS_PATH}/redoc.standalone.js" in urls
    assert foreign(urls, docs_service) == []
    assert console_errors(browser) == []
