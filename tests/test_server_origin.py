"""DNS rebinding and cross-site requests (issue 16, item 5): a server bound to 127.0.0.1
answers only requests that name it by a loopback name (or one --allowed-hosts adds), in
the API's error shape otherwise (403); a POST must carry a JSON content type (415), which
a cross-site form or text/plain request cannot; no `server` header says what runs here.
The openai client, httpx's json= and the page's fetch (test_web.py) send JSON already."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from failures import error_of
from runner.args import parse_args
from runner.modes.api_common import Options
from runner.modes.origin import HostCheck, host_name, is_json
from runner.modes.server import create_app, serve_in_thread

pytestmark = pytest.mark.fast

BODY = {"prompt": "the cat is", "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def llm(tiny_path):
    import runner
    return runner.load(tiny_path, n_ctx=256, threads=1)


@pytest.fixture(scope="module")
def base(llm):
    with serve_in_thread(create_app(llm, Options(log=False, allowed_hosts=("gemma.lan", ".box.example")))) as url:
        yield url


FOREIGN = ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io", "0.0.0.0",
           "10.0.0.5:8080", "gemma.lan.evil.example", "[::1", "::1"]
ROUTES = [("GET", "/props"), ("GET", "/"), ("GET", "/health"), ("POST", "/v1/completions"),
          ("OPTIONS", "/v1/chat/completions")]


def test_a_foreign_host_gets_403_on_every_route(base):
    with httpx.Client() as c:
        for i, host in enumerate(FOREIGN):
            for method, path in ROUTES if i == 0 else ROUTES[i % len(ROUTES):][:1]:
                r = c.request(method, base + path, headers={"Host": host}, json=BODY if method == "POST" else None)
                assert r.status_code == 403, (host, method, path, r.status_code)
                assert error_of(r)["code"] == "host_not_allowed"


def test_loopback_and_allowed_names_are_served(base):
    with httpx.Client() as c:
        for host in ["127.0.0.1", "127.0.0.1:1234", "localhost", "LOCALHOST:8080", "localhost.", "app.localhost:80",
                     "127.1.2.3", "[::1]", "[::1]:8080", "gemma.lan", "gemma.lan:8080", "box.example",
                     "a.b.box.example:9"]:
            assert c.get(base + "/props", headers={"Host": host}).status_code == 200, host
        for host in ["localhost:8080", "[::1]:8080", "gemma.lan"]:
            r = c.post(base + "/v1/completions", headers={"Host": host}, json=BODY, timeout=60)
            assert r.status_code == 200 and r.json()["choices"], host


def test_a_preflight_passes_the_host_check_and_needs_no_key(llm):
    """A CORS preflight carries no credentials: it passes the Host check and the key check
    and is answered (test_server_conform.py checks its CORS headers)."""
    with serve_in_thread(create_app(llm, Options(log=False, api_key="k"))) as url:
        pre = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
        r = httpx.options(url + "/v1/chat/completions", headers=pre)
        assert r.status_code not in (401, 403)
        assert httpx.options(url + "/v1/chat/completions", headers={**pre, "Host": "evil.example"}).status_code == 403


def test_a_server_bound_to_all_addresses_answers_any_host(llm):
    check = HostCheck("0.0.0.0")
    assert not check.active and check.allows("evil.example")
    assert HostCheck("127.0.0.1").active and HostCheck("localhost").active and HostCheck("::1").active
    assert HostCheck("127.0.0.1", ("*",)).allows("evil.example")
    assert host_name("[::1]:80") == "::1" and host_name("a:b:c") is None and host_name("x.:5") == "x"


def test_a_post_without_a_json_content_type_is_415(base):
    """What a cross-site form or fetch can send without a preflight, to every POST route:
    refused before the body is read, so no generation starts."""
    body = json.dumps({**BODY, "messages": [{"role": "user", "content": "hi"}], "content": "hi"}).encode()
    kinds = [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
             "multipart/form-data; boundary=x", "application/jsonp", "text/json"]
    paths = ["/v1/completions", "/v1/chat/completions", "/completion", "/tokenize", "/detokenize"]
    with httpx.Client() as c:
        for i, kind in enumerate(kinds):
            for path in paths if i == 1 else paths[i % len(paths):][:1]:
                r = c.post(base + path, content=body, headers={"Content-Type": kind} if kind else {}, timeout=60)
                assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type", (kind, path)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_content_types_are_served(base, content_type):
    assert is_json(content_type)
    r = httpx.post(base + "/v1/completions", content=json.dumps(BODY).encode(),
                   headers={"Content-Type": content_type}, timeout=60)
    assert r.status_code == 200


def test_clients_still_work_and_no_server_header(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    assert client.completions.create(model="m", **BODY).usage.completion_tokens >= 0
    r = httpx.get(base + "/health")
    assert r.status_code == 200 and "server" not in r.headers


def test_the_allowed_hosts_flag():
    from runner.modes.api_common import Options as O
    args = parse_args(["--server", "--allowed-hosts", "a.lan,b.lan", "--allowed-hosts", ".c.example"])
    assert O.from_args(args).allowed_hosts == ("a.lan", "b.lan", ".c.example")
