"""/api/docs in a real browser: headless Chromium (Debian's, through its ChromeDriver) shows
every operation of openapi.yaml, and "Try it out" on create reaches the running service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.databases import sqlite_database
from tests.support.server import RunningServer, running_server

REPOSITORY = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((REPOSITORY / "openapi.yaml").read_text())
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Screenshots stay after the run (test-results/ is git-ignored); the session summary lists them.
OUTPUT_DIR = REPOSITORY / "test-results" / "browser"
SCREENSHOTS: list[Path] = []
WAIT_SECONDS = 60
CREATE = "create_task_run_task_runs__post"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def documented_operations() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> operationId of every operation in the document."""
    return {
        (method.upper(), path): operation["operationId"]
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        reason = "needs Debian's chromium and chromium-driver, which `make test` installs"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,2200",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with (
        sqlite_database(tmp_path_factory.mktemp("docs")) as url,
        running_server(url, workers=1) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def page(browser: WebDriver, server: RunningServer) -> WebDriver:
    """The docs page, loaded, with every operation rendered."""
    browser.get(f"{server.base_url}/api/docs")
    expected = len(documented_operations())
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= expected
    )
    screenshot(browser, "docs-page.png")
    return browser


def screenshot(browser: WebDriver, name: str) -> None:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / name
    assert browser.save_screenshot(str(path))
    SCREENSHOTS.append(path)


def operation_block(page: WebDriver, method: str, path: str) -> WebElement:
    for block in page.find_elements(By.CSS_SELECTOR, ".opblock"):
        summary_path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path")
        summary_method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method")
        if summary_method.text == method and summary_path.get_attribute("data-path") == path:
            return block
    raise AssertionError(f"{method} {path} is not on the page")


class TestDocsPage:
    def test_shows_every_operation_of_the_document(self, page: WebDriver) -> None:
        shown = {
            (
                block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
                block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute(
                    "data-path"
                ),
            )
            for block in page.find_elements(By.CSS_SELECTOR, ".opblock")
        }
        missing = {
            operation_id
            for key, operation_id in documented_operations().items()
            if key not in shown
        }

        assert not missing, f"operations of openapi.yaml not on /api/docs: {sorted(missing)}"
        assert len(shown) == len(documented_operations())

    def test_renders_the_document_as_openapi_31(self, page: WebDriver) -> None:
        title = page.find_element(By.CSS_SELECTOR, ".info .title").text

        assert title.startswith(SPEC["info"]["title"])
        assert "OAS 3.1" in title
        assert not page.find_elements(By.CSS_SELECTOR, ".errors-wrapper")

    def test_loads_nothing_from_other_hosts(self, page: WebDriver, server: RunningServer) -> None:
        loaded: list[str] = page.execute_script(
            "return performance.getEntriesByType('resource').map(entry => entry.name)"
        )

        assert any(url.endswith("/api/openapi.json") for url in loaded)
        assert [url for url in loaded if not url.startswith(server.base_url)] == []

    def test_try_it_out_creates_a_task_run(self, page: WebDriver, server: RunningServer) -> None:
        block = operation_block(page, "POST", "/task_runs/")
        block.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
        wait = WebDriverWait(page, WAIT_SECONDS)
        wait.until(lambda _: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
        block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
        editor = wait.until(
            lambda _: block.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
        )
        editor.clear()
        editor.send_keys(json.dumps({"task_key": "from-swagger-ui", "dynamic_key": "0"}))
        block.find_element(By.CSS_SELECTOR, "button.execute").click()

        status = wait.until(
            lambda _: block.find_element(
                By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"
            )
        )
        body = block.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight").text
        page.execute_script(
            "arguments[0].scrollIntoView()",
            block.find_element(By.CSS_SELECTOR, ".live-responses-table"),
        )
        screenshot(page, "docs-try-it-out-create.png")

        assert status.text.strip() == "201"
        created = json.loads(body)
        assert UUID.fullmatch(created["id"])
        assert created["task_key"] == "from-swagger-ui"
        read = httpx.get(f"{server.api_url}/task_runs/{created['id']}")
        assert read.status_code == 200
        assert read.json()["task_key"] == "from-swagger-ui"
