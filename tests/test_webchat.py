"""The built-in web chat page in a real headless browser (Debian's Chromium through Playwright).

A document is uploaded, a message sent, the streamed reply and the memory gauge are checked
against the server, and a screenshot is written to ``tests/artifacts/webchat.png``.

Locally the test skips (with the reason) when Playwright or Chromium is missing; under
``CI=true`` it fails instead, since ``.ci/run`` installs Chromium before the tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tappa_local.localmodels import TinyModel

CHROMIUM = Path(os.environ.get("TAPPA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "webchat.png"


def _browser_problems() -> list[str]:
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright Python package is not installed (it is in the dev extra)")
    try:
        from fastapi import FastAPI  # noqa: F401
    except ImportError:
        problems.append("the server extra (fastapi, uvicorn, ...) is not installed")
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} is missing (Debian: apt-get install chromium; .ci/run installs it)")
    return problems


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problems = _browser_problems()
    if problems:
        message = "; ".join(problems)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and the browser test cannot run: {message}")
        pytest.skip(f"web chat browser test skipped: {message}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(browser: Any, tiny_llama: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tappa_local.server.process import serve_process

    log = tmp_path_factory.mktemp("webchat") / "server.log"
    args = ["--budget", "48", "--n-batch", "64", "--n-ctx", "2048", "--threads", "2", "--model-alias", "tiny-llama"]
    with serve_process(tiny_llama.gguf_path, args, log_path=log) as srv:
        yield srv


def _mib(x: float) -> str:
    return f"{x:.2f} MiB" if x < 10 else f"{x:.1f} MiB"


def test_webchat_streams_a_reply_and_shows_the_memory_gauge(browser: Any, server: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 960, "height": 600})
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")

    # the gauge: compressed KV MiB against the full cache, from /v1/tappa/stats
    page.wait_for_function("document.getElementById('kv').textContent.includes('MiB')", timeout=20_000)
    stats = server.get_json("/v1/tappa/stats")
    assert page.inner_text("#kv") == _mib(stats["kv"]["kv_mib"])
    assert page.inner_text("#full") == _mib(stats["kv"]["full_kv_mib"])
    width = float(page.eval_on_selector("#fill", "e => parseFloat(e.style.width)"))
    assert 0 < width < 100 and width == pytest.approx(100 * stats["kv"]["kv_fraction"], abs=0.01)
    assert "tiny-llama" in page.inner_text("#model")

    # upload a document (many times the 48-token budget); it becomes part of the next message
    page.click("details summary")
    doc = tmp_path / "notes.md"
    doc.write_text("".join(f"- note {i}: the value of item {i} is {i * 37 % 1000}\n" for i in range(30)))
    page.set_input_files("#file", str(doc))
    page.wait_for_selector("#docs .chip")
    assert "notes.md" in page.inner_text("#docs")

    # count how many times the reply bubble changes while it streams
    page.evaluate(
        """() => {
            window.__updates = 0;
            new MutationObserver(() => { window.__updates += 1; })
                .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.fill("#maxtokens", "24")
    page.fill("#input", "What is the value of item 7?")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as resp_info:
        page.press("#input", "Enter")
    response = resp_info.value
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    page.wait_for_function("!document.getElementById('send').disabled", timeout=120_000)
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant .body')[0].textContent.length > 0", timeout=60_000
    )

    bubbles = page.query_selector_all(".msg")
    roles = [b.get_attribute("class") for b in bubbles]
    assert roles == ["msg user", "msg assistant"], roles
    assert "notes.md" in bubbles[0].inner_text() and "What is the value of item 7?" in bubbles[0].inner_text()
    assert page.inner_text("#docs") == ""  # the document was sent with the message
    assert page.evaluate("window.__updates") >= 3  # the user bubble, then the reply growing piece by piece

    after = server.get_json("/v1/tappa/stats")
    assert after["last_chat_prompt"]["reused"] == 0
    n_doc_tokens = after["last_chat_prompt"]["tokens"]
    assert n_doc_tokens > 10 * 48  # the document went into the prompt
    assert after["kv"]["kv_bytes"] == stats["kv"]["kv_bytes"]  # the compressed cache did not grow
    page.wait_for_function(
        f"document.getElementById('positions').textContent.replace(/,/g, '').startsWith('{after['kv']['tokens_seen']} ')",
        timeout=10_000,
    )

    # a second message continues the cached conversation: the page sends the reply back verbatim
    page.fill("#input", "And item 9?")
    page.press("#input", "Enter")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant').length == 2 && !document.getElementById('send').disabled",
        timeout=120_000,
    )
    second = server.get_json("/v1/tappa/stats")["last_chat_prompt"]
    assert second["reused"] >= n_doc_tokens, second

    page.click("details summary")  # fold the document panel for the screenshot
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACT))
    assert ARTIFACT.stat().st_size < 300_000
    assert console_errors == []
    page.close()


def test_webchat_shows_server_errors(browser: Any, server: Any) -> None:
    page = browser.new_page(viewport={"width": 800, "height": 500})
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('kv').textContent.includes('MiB')", timeout=20_000)
    page.click("details summary")
    page.fill("#maxtokens", "4")
    page.fill("#input", "word " * 3000)  # past n_ctx 2048: refused with HTTP 400 before streaming
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.notice", timeout=60_000)
    assert "maximum context length" in page.inner_text(".msg.notice")
    page.close()
