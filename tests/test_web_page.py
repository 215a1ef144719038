"""The web page at ``/`` in a real headless browser (Debian's chromium, driven by Playwright)
against a real server: it lists a share, downloads a file, uploads one that ``fsclient ls``
then shows, restores an old version, shows the deleted files, and shows a change made by
``fsclient put`` without a reload. Screenshots go to ``build/test-artifacts/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cli import fsclient
from tests.secured import add_token
from tests.serverproc import ROOT

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium")
ARTIFACTS = ROOT / "build" / "test-artifacts"
WAIT_MS = 15_000
UPLOADED = b"dropped \x00 bytes" * 1000

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(make test installs it)")  # fmt: skip


@pytest.fixture
def browser():
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def test_the_page_browses_downloads_uploads_restores_and_shows_live_changes(
    tmp_path, server_factory, browser
):
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "browser", "default")
    server = server_factory("--store-size", "64MiB", "--http-port", "0", "--tokens", str(tokens))
    auth = ("--token", token)

    def put(name: str, data: bytes, remote: str) -> None:
        local = tmp_path / name
        local.write_bytes(data)
        done = fsclient("put", str(local), remote, *auth, server=server)
        assert done.returncode == 0, done.stderr

    put("a", b"first report", "report.txt")
    put("b", b"second report", "report.txt")
    put("c", b"nested", "docs/notes/n.txt")
    put("d", b"to be deleted", "old.txt")
    assert fsclient("rm", "old.txt", *auth, server=server).returncode == 0

    page = browser.new_page(accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    page.goto(f"http://{server.host}:{server.http_port}/")
    page.fill("#token", token)
    page.click("#login")
    expect = playwright.expect
    expect(page.locator('#files tr.file[data-path="report.txt"]')).to_be_visible()
    expect(page.locator('#files tr.folder[data-path="docs/"]')).to_be_visible()
    shot(page, "listing")

    with page.expect_download() as download:
        page.click('#files tr.file[data-path="report.txt"] .download')
    saved = tmp_path / "downloaded.txt"
    download.value.save_as(saved)
    assert saved.read_bytes() == b"second report"

    page.set_input_files("#upload-input", files=[
        {"name": "from-browser.bin", "mimeType": "application/octet-stream",
         "buffer": UPLOADED},
    ])  # fmt: skip
    expect(page.locator("#upload-status")).to_contain_text("uploaded from-browser.bin")
    listed = fsclient("ls", *auth, server=server)
    assert f"from-browser.bin\t{len(UPLOADED)}\t" in listed.stdout, listed.stdout
    got = fsclient("get", "from-browser.bin", str(tmp_path / "fb.bin"), *auth, server=server)
    assert got.returncode == 0 and (tmp_path / "fb.bin").read_bytes() == UPLOADED

    page.click('#files tr.file[data-path="report.txt"] .history')
    kept = page.locator("#history tbody tr.kept")
    expect(kept).to_have_count(1)
    shot(page, "history")
    kept.locator(".restore").click()
    expect(page.locator("#history-status")).to_contain_text("restored as version")
    back = fsclient("get", "report.txt", str(tmp_path / "r.txt"), *auth, server=server)
    assert back.returncode == 0 and (tmp_path / "r.txt").read_bytes() == b"first report"
    page.click("#history-close")

    page.click("#show-deleted")
    expect(page.locator('#deleted tr[data-path="old.txt"]')).to_be_visible()

    put("e", b"made elsewhere", "live.txt")  # no reload: the change stream brings it
    expect(page.locator("#activity li", has_text="live.txt")).to_be_visible()
    expect(page.locator('#files tr.file[data-path="live.txt"]')).to_be_visible()
    shot(page, "live")
    assert errors == []


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"web-page-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path
