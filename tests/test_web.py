"""The web page in a real browser: Playwright driving Debian's headless Chromium
(/usr/bin/chromium; `apt-get install -y chromium`). Screenshots go to tests/artifacts/."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from runner.modes.api_common import Options
from runner.modes.server import create_app, serve_in_thread
from conftest import cold


@pytest.fixture(scope="module", autouse=True)
def exact_mode():
    """The exact mode (float32 activations) for this module: its tests compare texts
    computed along different paths (the browser's server and the library), equal to the last bit only there (see
    test_repl.exact_mode); the kernels read the variable at every product and child
    processes inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEMMA_RUNNER_KERNELS", "float32")
        yield


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def base(llm):
    with serve_in_thread(create_app(llm, Options(log=False))) as url:
        yield url


@pytest.fixture(scope="module")
def page(base, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")),
                                                   executable_path=str(CHROMIUM), args=ARGS, headless=True,
                                                   viewport={"width": 1000, "height": 800})
        pg = ctx.new_page()
        pg.goto(base + "/")
        yield pg
        ctx.close()


def settings(page, temperature: float, max_tokens: int) -> None:
    page.click("#tab-settings")
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))
    page.click("#tab-settings")


def slots_idle(base: str, within: float = 5.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if not any(s["is_processing"] for s in httpx.get(base + "/slots").json()):
            return True
        time.sleep(0.05)
    return False


def test_attach_image_is_hidden_for_a_model_without_vision(page, base):
    """The 270M model has no vision projector: /props says so and the page offers no
    Attach image (test_images_modes.py shows it for a vision model)."""
    assert httpx.get(base + "/props").json()["modalities"]["vision"] is False
    page.wait_for_function("document.getElementById('model-name').textContent.length > 0")
    assert page.locator("#attach-slot").is_hidden()


def test_chat_streams_a_reply_and_stop_ends_it(page, base):
    settings(page, 0, 300)
    page.fill("#chat-input", "Tell me a long story about a dragon.")
    page.press("#chat-input", "Enter")
    assert page.inner_text("#messages .msg.user") == "Tell me a long story about a dragon."
    reply = page.locator("#messages .msg.assistant .body")
    lengths = []
    t0 = time.monotonic()
    while len(set(lengths) - {0}) < 3:                   # the text grew in several steps: streamed
        assert time.monotonic() - t0 < 60, f"no streamed reply: {lengths}"
        lengths.append(len(reply.inner_text()))
        time.sleep(0.05)
    assert page.is_visible("#stop") and page.is_disabled("#send")
    page.click("#stop")
    page.wait_for_selector("#stop", state="hidden")
    assert page.inner_text("#chat-status") == "stopped"
    assert page.is_enabled("#send")
    assert slots_idle(base, 3.0), "the server kept generating after Stop"
    stopped = reply.inner_text()
    time.sleep(0.5)
    assert reply.inner_text() == stopped and stopped
    page.screenshot(path=str(ARTIFACTS / "web-chat.png"))
    page.click("#clear")
    assert page.locator("#messages .msg").count() == 0
    assert "base model" in page.inner_text("#messages .empty")


def test_completion_tab_streams_the_continuation(page, llm):
    page.click("#tab-completion")
    assert page.is_visible("#panel-completion") and not page.is_visible("#panel-chat")
    settings(page, 0, 12)
    prompt = "The capital of France is"
    page.fill("#completion-prompt", prompt)
    page.click("#complete")
    page.wait_for_function("document.getElementById('completion-status').textContent.includes('tok/s')",
                           timeout=60_000)
    assert page.inner_text("#completion-output .prompt-echo") == prompt
    assert page.inner_text("#completion-output .generated") == cold(llm).complete(prompt, max_tokens=12, temperature=0)
    page.screenshot(path=str(ARTIFACTS / "web-completion.png"))
    # a long prompt: the prefill shows its progress before the first token
    settings(page, 0, 1)
    page.fill("#completion-prompt", "The river rose slowly through the night. " * 120)
    page.click("#complete")
    seen = set()
    while page.is_visible("#completion-stop") or not seen:
        seen.add(page.inner_text("#completion-status"))
        time.sleep(0.02)
    assert any(s.startswith("processing prompt… ") and "%" in s for s in seen), seen


def test_phone_width_has_no_sideways_scroll(page):
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("#tab-chat")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = page.locator("#send").bounding_box()
    assert box and box["x"] + box["width"] <= 390
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"))
    page.set_viewport_size({"width": 1000, "height": 800})


def test_markdown_renderer_escapes_html(page):
    html = page.evaluate("""Markdown.render('<img src=x onerror=alert(1)> **bold** `a<b>` [x](javascript:alert(1))\\n'
                                          + '```js\\nif (a < b) {}\\n```')""")
    assert "<img" not in html and "&lt;img" in html
    assert "<strong>bold</strong>" in html and "<code>a&lt;b&gt;</code>" in html
    assert "<a " not in html                             # only http(s) links become anchors
    link = page.evaluate("Markdown.render('[docs](https://example.com/?a=1&b=\"2)')")
    assert link == ('<p><a href="https://example.com/?a=1&amp;b=&quot;2" target="_blank" '
                    'rel="noopener noreferrer">docs</a></p>')
    assert '<pre data-lang="js"><code>if (a &lt; b) {}</code></pre>' in html


def test_a_chat_longer_than_the_context_drops_its_oldest_exchanges(llm, page):
    """With -c 256, a conversation three times longer keeps being answered: the page
    drops the oldest exchanges from what it sends (the system prompt stays), greys them
    out and says so."""
    import runner
    small = runner.load(llm.gguf.path, n_ctx=256)
    seen = []
    with serve_in_thread(create_app(small, Options(log=False))) as url:
        pg = page.context.new_page()                      # another origin: its own storage
        pg.on("request", lambda r: seen.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
        pg.goto(url + "/")
        pg.wait_for_load_state("networkidle")
        settings(pg, 0, 16)
        pg.click("#tab-settings")
        pg.fill("#system-prompt", "You keep a ship's log.")
        pg.click("#tab-settings")
        for i in range(8):
            pg.fill("#chat-input", f"Entry {i}: " + "the river rose and the village slept. " * 10)
            pg.press("#chat-input", "Enter")
            pg.wait_for_function("document.getElementById('chat-status').textContent.includes('tok/s')",
                                 timeout=120_000)
        # every entry was sent last in a request, and each was answered (the status shows
        # the reply's speed); a reply may be empty, and then it is not kept
        assert {r["messages"][-1]["content"][:8] for r in seen} == {f"Entry {i}:" for i in range(8)}
        assert "no longer sent" in pg.inner_text("#notice")
        assert pg.locator("#messages .msg.dropped").count() >= 2
        kept = pg.locator("#messages .msg.assistant").count()
        pg.reload()                                         # what is shown is what was kept
        pg.wait_for_load_state("networkidle")
        assert pg.locator("#messages .msg.assistant").count() == kept
        last = seen[-1]["messages"]
        assert last[0] == {"role": "system", "content": "You keep a ship's log."}
        assert last[1]["role"] == "user" and not last[1]["content"].startswith("Entry 0:")
        pg.screenshot(path=str(ARTIFACTS / "web-long-chat.png"))
        pg.close()
