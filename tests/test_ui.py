"""The published results as a person sees them: the Prefect UI of a real server, in Debian's Chromium.

Reuses the deployed-and-run chain flow of `tests/test_deployment.py` (same server, same run). Chromium comes
from `scripts/ensure-chromium`; when it is missing these tests FAIL (never skip). Every test saves a
screenshot of each page it checked under its tmp folder, and one named `failure-*.png` when a check fails.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from prefect_bacalhau_publish.artifacts import spec_from_description
from prefect_bacalhau_publish.testing import MinioServer
from tests.test_deployment import ChainRun, shared_chain_run

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000  # a cold UI bundle on a busy 2-core machine
CLICK_SETTLE_MS = 5_000  # how long a tab click has to show in the URL before it is clicked again


@pytest.fixture(scope="module")
def ui_run(tmp_path_factory: pytest.TempPathFactory, minio: MinioServer) -> Iterator[ChainRun]:
    """The chain run shared with tests/test_deployment.py (one real server per test process)."""
    with shared_chain_run(tmp_path_factory, minio) as run:
        yield run


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium driven by Playwright; fails loudly when chromium is not installed."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run scripts/ensure-chromium (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own context: no cookies or storage shared between tests)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@contextlib.contextmanager
def screenshot_on_failure(page: Page, folder: Path, step: str) -> Iterator[None]:
    """Run a step; if it fails, save `failure-<step>.png` (and the page's HTML) before re-raising."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(folder / f"failure-{step}.png"), full_page=True)
            (folder / f"failure-{step}.html").write_text(page.content())
        raise


def _table_rows(page: Page) -> dict[str, str]:
    """The rendered table artifact as Field → Value (the cells' text)."""
    rows: dict[str, str] = {}
    for row in page.locator("table tbody tr").all():
        cells = [cell.strip() for cell in row.locator("td").all_inner_texts()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def _specs(run: ChainRun) -> dict[str, dict[str, Any]]:
    """Table artifact key → its published result's Params, from the API (what the UI must show)."""
    return {
        artifact["key"]: spec_from_description(artifact["description"]).to_bacalhau()
        for artifact in run.artifacts()
        if artifact["type"] == "table"
    }


def _open_artifacts_tab(page: Page, run: ChainRun) -> None:
    """Open the run's page and click its Artifacts tab, as a person does.

    A page served from cache can draw its tabs before the router's first navigation settles, and that
    navigation then puts back the URL without the tab, dropping the click (CI saw it once). So the click is
    repeated, each time polling the URL for a few seconds, until the tab is in the URL or the test's timeout.
    """
    page.goto(f"{run.server.url}/runs/flow-run/{run.flow_run_id}")
    tab = page.locator(".p-tab", has_text=re.compile(r"^\s*Artifacts\s*$"))
    in_url = re.compile(r"[?&]tab=Artifacts")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        tab.click()
        try:
            expect(page).to_have_url(in_url, timeout=CLICK_SETTLE_MS)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def _card(page: Page, key: str) -> Any:
    title = page.locator(".artifact-card__title", has_text=re.compile(f"^\\s*{re.escape(key)}\\s*$"))
    return page.locator("a", has=title)


def test_flow_run_artifacts_tab_shows_each_published_result(
    ui_run: ChainRun, page: Page, tmp_path: Path
) -> None:
    specs = _specs(ui_run)
    assert len(specs) == 2, specs
    with screenshot_on_failure(page, tmp_path, "artifacts-tab"):
        _open_artifacts_tab(page, ui_run)
        for key in specs:
            _card(page, key).wait_for()
            _card(page, f"{key}-link").wait_for()
        subheaders = page.locator(".artifact-card__subheader").all_inner_texts()
        assert sorted(s.strip().lower() for s in subheaders) == ["markdown", "markdown", "table", "table"]
        page.screenshot(path=str(tmp_path / "artifacts-tab.png"), full_page=True)

    for index, (key, spec) in enumerate(sorted(specs.items())):
        step = f"table-{index}"
        with screenshot_on_failure(page, tmp_path, step):
            _open_artifacts_tab(page, ui_run)
            _card(page, key).click()
            page.wait_for_url(re.compile(r"/artifacts/artifact/[0-9a-f-]{36}$"))
            page.locator("table td", has_text=re.compile(r"^\s*ChecksumSHA256\s*$")).wait_for()
            rows = _table_rows(page)
            page.screenshot(path=str(tmp_path / f"{step}.png"), full_page=True)
            params = spec["Params"]
            assert rows["Type"] == "s3"
            assert rows["Key"] == params["Key"]
            assert rows["Bucket"] == ui_run.bucket == params["Bucket"]
            assert rows["Endpoint"] == ui_run.minio.endpoint
            assert rows["ChecksumSHA256"] == params["ChecksumSHA256"]
            # the header names the artifact key the CLI and get_result() take
            assert page.get_by_text(key, exact=True).first.is_visible()


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_link_artifact_href_downloads_the_verified_result(
    ui_run: ChainRun, page: Page, tmp_path: Path
) -> None:
    specs = _specs(ui_run)
    sums: list[str] = []
    for index, (key, spec) in enumerate(sorted(specs.items())):
        step = f"link-{index}"
        with screenshot_on_failure(page, tmp_path, step):
            _open_artifacts_tab(page, ui_run)
            _card(page, f"{key}-link").click()
            page.wait_for_url(re.compile(r"/artifacts/artifact/[0-9a-f-]{36}$"))
            anchor = page.get_by_role("link", name="s3 result", exact=True)
            anchor.wait_for()
            href = anchor.get_attribute("href")
            page.screenshot(path=str(tmp_path / f"{step}.png"), full_page=True)
        assert href is not None
        params = spec["Params"]
        assert href.startswith(f"{ui_run.minio.endpoint}/{params['Bucket']}/{params['Key']}?"), href
        response = httpx.get(href, timeout=30.0, trust_env=False)  # the presigned URL alone, no credentials
        assert response.status_code == 200, response.text[:500]
        body = response.content
        assert body[:2] == b"\x1f\x8b", "not gzip"
        assert _sha256_b64(body) == params["ChecksumSHA256"]
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(body)), mode="r:") as tar:
            names = set(tar.getnames())
            assert {"stdout", "stderr", "exitCode"} <= names, names
            exit_code = tar.extractfile("exitCode")
            assert exit_code is not None and exit_code.read() == b"0"
            if "outputs/sum.txt" in names:  # job B's result: it read job A's published numbers
                member = tar.extractfile("outputs/sum.txt")
                assert member is not None
                sums.append(member.read().decode().strip())
    assert sums == [str(sum(range(1, 1001)))]


def test_blocks_saved_by_setup_are_visible_and_editable_in_the_ui(
    ui_run: ChainRun, page: Page, tmp_path: Path
) -> None:
    s3 = ui_run.server.api("GET", "/block_types/slug/bacalhau-s3-storage/block_documents/name/bacalhau-s3")
    with screenshot_on_failure(page, tmp_path, "blocks-list"):
        page.goto(f"{ui_run.server.url}/blocks")
        for name in ("bacalhau-s3", "bacalhau-s3-credentials", "bacalhau-ipfs", "bacalhau-local"):
            page.get_by_text(name, exact=True).first.wait_for()
        page.screenshot(path=str(tmp_path / "blocks-list.png"), full_page=True)
    with screenshot_on_failure(page, tmp_path, "s3-block"):
        page.goto(f"{ui_run.server.url}/blocks/block/{s3['id']}")
        page.get_by_text(ui_run.minio.endpoint, exact=True).first.wait_for()
        page.get_by_text('S3Storage.load("bacalhau-s3")').first.wait_for()  # the block's code example
        page.screenshot(path=str(tmp_path / "s3-block.png"), full_page=True)
        assert ui_run.minio.password not in page.content()
    with screenshot_on_failure(page, tmp_path, "s3-block-edit"):
        # the edit form picks the credentials union member and the saved credentials block it references
        page.goto(f"{ui_run.server.url}/blocks/block/{s3['id']}/edit")
        page.get_by_text("bacalhau-s3-credentials", exact=True).first.wait_for()
        page.get_by_text(
            "A prefect-aws credentials block; empty uses the AWS default credential chain."
        ).wait_for()
        values = page.eval_on_selector_all("input, textarea", "els => els.map(e => e.value)")
        page.screenshot(path=str(tmp_path / "s3-block-edit.png"), full_page=True)
        assert ui_run.minio.endpoint in values and "us-east-1" in values, values
        assert ui_run.minio.password not in page.content()
    with screenshot_on_failure(page, tmp_path, "catalog"):
        page.goto(f"{ui_run.server.url}/blocks/catalog/bacalhau-s3-storage")
        page.get_by_text(
            "S3 or S3-compatible storage (MinIO) for Bacalhau-style result publishing."
        ).wait_for()
        page.get_by_text("S3Storage.load(").first.wait_for()
        page.screenshot(path=str(tmp_path / "catalog.png"), full_page=True)


def test_flow_run_page_shows_a_jobs_stdout_line(ui_run: ChainRun, page: Page, tmp_path: Path) -> None:
    # issue #23: what the job printed is in the run's logs, named for the job (flows/chain.py's job A)
    with screenshot_on_failure(page, tmp_path, "job-output-in-logs"):
        page.goto(f"{ui_run.server.url}/runs/flow-run/{ui_run.flow_run_id}")
        page.get_by_text("[job-a stdout] job A wrote 1000 numbers").first.wait_for()
        page.screenshot(path=str(tmp_path / "job-output-in-logs.png"), full_page=True)
