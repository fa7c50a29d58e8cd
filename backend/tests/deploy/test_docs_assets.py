"""/docs and /redoc work air-gapped: every asset is served by the API itself, and a real browser
renders the page under the API's Content-Security-Policy with every other host unreachable."""

import os
import re
import shutil
import subprocess

import pytest

from tests.support import missing, running_app, settings_for

ASSET = re.compile(r'(?:src|href)="([^"]+)"')


def local_assets(html: str) -> list[str]:
    urls = ASSET.findall(html)
    assert urls, "the page references no assets"
    return urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_reference_only_assets_the_api_serves(api, page):
    response = api.get(page)
    assert response.status_code == 200
    assert "cdn" not in response.text.lower()
    assert "fonts.googleapis" not in response.text
    for url in local_assets(response.text):
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        asset = api.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if path is None:
        missing("chromium is not installed (apt-get install chromium)")
    return path


def render(browser: str, url: str, profile) -> str:
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            # Air-gapped: no name resolves, so any CDN reference would fail to load.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return result.stdout


@pytest.mark.slow  # seconds of waiting (outside `make test-fast`)
def test_swagger_ui_renders_in_a_browser_without_network(sqlite_url, tmp_path):
    browser = chromium()
    with running_app(settings_for(sqlite_url)) as client:
        dom = render(browser, f"{client.base_url}/docs", tmp_path / "profile")
    # Only Swagger UI's JavaScript, run in the browser, turns the OpenAPI document into these.
    assert "swagger-ui" in dom
    for summary in ("List tasks", "Create a task", "Toggle or set completion"):
        assert summary in dom, dom[-2000:]


@pytest.mark.slow  # seconds of waiting (outside `make test-fast`)
def test_redoc_renders_in_a_browser_without_network(sqlite_url, tmp_path):
    browser = chromium()
    with running_app(settings_for(sqlite_url)) as client:
        dom = render(browser, f"{client.base_url}/redoc", tmp_path / "profile")
    for summary in ("List tasks", "Create a task"):
        assert summary in dom, dom[-2000:]
