"""Images through every front end, on a tiny random vision model (tests/vision_fixtures):
--cli --image, /upload in the REPL, image_url parts in the chat API. The library's
output for the same image is the reference (the library itself is checked against
transformers in test_vision.py); what is asserted here is the plumbing, and that the
image reaches the model."""
from __future__ import annotations

import base64
import io
import subprocess
import sys

import httpx
import numpy as np
import pytest

import runner
from runner.modes.api_common import Options
from runner.modes.conversation import Conversation
from runner.modes.server import create_app, serve_in_thread
from vision_fixtures import build_mm_model, sample_image, write_mm_model

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mm_modes")
    text, proj = write_mm_model(build_mm_model(seed=3), d)
    pics = []
    for i, size in enumerate([(150, 120), (90, 200)]):
        p = d / f"pic{i}.png"
        sample_image(size, seed=10 + i).save(p)
        pics.append(p)
    return text, proj, pics


@pytest.fixture(scope="module")
def mm(files):
    text, proj, _ = files
    return runner.load(text, mmproj=proj, n_ctx=1024)


def image_message(source, text=QUESTION):
    return [{"role": "user", "content": [{"type": "image", "image": source}, {"type": "text", "text": text}]}]


def test_the_image_changes_the_logits(mm, files):
    _, _, pics = files
    a, b = (mm.logits(mm.chat_prompt(image_message(p))) for p in pics)
    assert a.shape == b.shape
    n_before = mm.chat_prompt(image_message(pics[0])).images[0].start
    assert np.array_equal(a[:n_before], b[:n_before])             # the same text before the image
    assert np.abs(a[-1] - b[-1]).max() > 1e-3                      # and the image reaches the reply


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "runner", *args], input=stdin, capture_output=True,
                          text=True, timeout=300)


def test_cli_image_equals_the_library(mm, files):
    text, proj, pics = files
    r = run_cli("--cli", "-m", str(text), "--mmproj", str(proj), "--image", str(pics[0]), "-p", QUESTION,
                "-n", "8", "--temp", "0", "--log-disable", "--no-display-prompt")
    assert r.returncode == 0, r.stderr
    mm.engine.reset()
    assert r.stdout == mm.chat(image_message(str(pics[0])), max_tokens=8, temperature=0)


def test_cli_image_errors(files, tmp_path):
    text, proj, pics = files
    r = run_cli("--cli", "-m", str(text), "--image", str(pics[0]), "-p", "x")
    assert r.returncode == 2 and "--mmproj" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    r = run_cli("--cli", "-m", str(text), "--mmproj", str(proj), "--image", str(bad), "-p", "x", "-n", "2")
    assert r.returncode == 1 and "bad.png" in r.stderr and "Traceback" not in r.stderr


def test_repl_upload_lays_out_the_image_as_the_chat_api_does(mm, files):
    """/upload IMG then a question: the tokens and image slots the REPL builds equal
    llm.chat_prompt for an image part followed by the text (the processor's layout)."""
    _, _, pics = files
    data = pics[0].read_bytes()
    conv = Conversation(mm, "gemma")
    conv.pending.append(("pic0.png", conv.add_image(data)))
    turn = conv.prompt(QUESTION)
    ref = mm.chat_prompt(image_message(data))
    assert list(turn.tokens) == ref.tokens
    assert [(im.start, im.key) for im in turn.images] == [(im.start, im.key) for im in ref.images]
    ahead = conv.next_prefix()                       # what is computed while the user types
    assert len(ahead.images) == 1 and ahead.images[0].start == ref.images[0].start
    assert ahead.ids() == ref.ids()[:len(ahead)]


def test_repl_upload_session(files):
    """A piped session: /upload an image, ask, and the reply equals the library's."""
    text, proj, pics = files
    session = f"/upload {pics[1]}\n{QUESTION}\n"
    r = run_cli("-m", str(text), "--mmproj", str(proj), "--chat-template", "gemma", "-n", "6",
                "--log-disable", stdin=session)
    assert r.returncode == 0, r.stderr
    assert "uploaded pic1.png" in r.stdout
    mm = runner.load(text, mmproj=proj, n_ctx=8192)
    expect = mm.chat(image_message(pics[1].read_bytes()), max_tokens=6, temperature=0)
    assert expect.strip() and expect.strip() in r.stdout


def test_repl_upload_without_vision_says_why(files):
    text, _, pics = files
    r = run_cli("-m", str(text), "--chat-template", "gemma", "--log-disable", stdin=f"/upload {pics[0]}\n")
    assert r.returncode == 0
    assert "--mmproj" in r.stdout + r.stderr


def data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def server(mm):
    app = create_app(mm, Options(nobrowser=True, log=False))
    with serve_in_thread(app) as base:
        yield base


def test_chat_api_with_an_image_equals_the_library(mm, server, files):
    _, _, pics = files
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(pics[1])}}, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 6, "temperature": 0}
    r = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    mm.engine.reset()
    expect = mm.chat(image_message(pics[1].read_bytes()), max_tokens=6, temperature=0)
    assert r.json()["choices"][0]["message"]["content"] == expect
    assert r.json()["usage"]["prompt_tokens"] == len(mm.chat_prompt(image_message(pics[1].read_bytes())))


@pytest.mark.parametrize("url, words", [("https://example.com/cat.png", "not fetched"),
                                        ("/etc/passwd", "data:image"),
                                        ("file:///etc/hostname", "data:image"),
                                        ("data:image/png;base64,AAAA", "image")])
def test_chat_api_refuses_other_image_sources(server, url, words):
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": 2}
    r = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] == "invalid_request_error"


def test_chat_api_image_without_vision(files):
    text, _, pics = files
    plain = runner.load(text, n_ctx=1024)
    app = create_app(plain, Options(nobrowser=True, log=False))
    with serve_in_thread(app) as base:
        body = {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(pics[0])}}]}], "max_tokens": 2}
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "--mmproj" in r.json()["error"]["message"]


def test_responses_api_with_an_image_equals_the_library(mm, server, files):
    """client.responses.create with an input_image part (a data: URI)."""
    import openai
    _, _, pics = files
    client = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=120)
    r = client.responses.create(model="m", max_output_tokens=6, temperature=0, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": data_uri(pics[1])}, {"type": "input_text", "text": QUESTION}]}])
    mm.engine.reset()
    assert r.output_text == mm.chat(image_message(pics[1].read_bytes()), max_tokens=6, temperature=0)
    assert r.usage.input_tokens == len(mm.chat_prompt(image_message(pics[1].read_bytes())))


def test_anthropic_api_with_an_image_equals_the_library(mm, server, files):
    """client.messages.create with a base64 image block."""
    import anthropic
    _, _, pics = files
    client = anthropic.Anthropic(base_url=server, api_key="x", max_retries=0, timeout=120)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(pics[0].read_bytes()).decode()}}
    m = client.messages.create(model="m", max_tokens=6, extra_body={"temperature": 0}, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": QUESTION}]}])
    mm.engine.reset()
    assert m.content[0].text == mm.chat(image_message(pics[0].read_bytes()), max_tokens=6, temperature=0)


def test_embed_image_api(mm, files):
    _, _, pics = files
    from PIL import Image
    a = mm.embed_image(str(pics[0]))
    b = mm.embed_image(pics[0].read_bytes())
    c = mm.embed_image(Image.open(io.BytesIO(pics[0].read_bytes())))
    assert a.shape == (256, mm.cfg.d) and a.dtype == np.float32
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_web_page_attaches_an_image(mm, server, files):
    """In the browser: Attach image, see its thumbnail, send a question; the request
    carries the image as a data: URI and the reply equals the library's for that image."""
    from test_web import ARGS, ARTIFACTS, CHROMIUM
    from playwright.sync_api import sync_playwright
    _, _, pics = files
    bodies = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 900, "height": 800})
        page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
        page.goto(server + "/")
        page.wait_for_selector("#attach-slot:not([hidden])")
        page.click("#tab-settings")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "6")
        page.click("#tab-settings")
        page.set_input_files("#attach-input", str(pics[1]))
        page.wait_for_selector("#attach-slot .thumb img")
        page.fill("#chat-input", QUESTION)
        page.press("#chat-input", "Enter")
        page.wait_for_selector("#send:not([disabled])", timeout=60000)
        assert page.locator("#attach-slot .thumb").count() == 0          # sent with the message
        assert page.locator("#messages .msg.user img.sent-image").count() == 1
        reply = page.inner_text("#messages .msg.assistant .body")
        page.screenshot(path=str(ARTIFACTS / "web-image.png"))
        browser.close()
    parts = bodies[-1]["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"] == data_uri(pics[1])
    assert parts[1] == {"type": "text", "text": QUESTION}
    mm.engine.reset()
    assert reply.strip() == mm.chat(image_message(pics[1].read_bytes()), max_tokens=6, temperature=0).strip()
