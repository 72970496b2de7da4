"""--server: the web page and an OpenAI-compatible API on FastAPI/uvicorn.

    gemma-runner --server [--host 127.0.0.1] [--port 8080] [--nobrowser] [--api-key KEY] [-np N]
                          [--allowed-hosts NAME,...] [--cors-origins ORIGINS] [--timeout S]

Routes: GET / (the page, runner/web/), /health, /v1/models, /props, /slots, /metrics;
POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages,
/v1/messages/count_tokens, /completion, /embedding, /tokenize, /detokenize, /apply-template. Without /v1,
each path is llama-server's alias: /completions is /completion (llama.cpp's shape).

The API answers in OpenAI's error shape: 400 for anything wrong in a request, 401 for a
missing or wrong key (with --api-key: every route but the page and /health), 403 for a
Host name a loopback-bound server does not answer to (origin.py), 404/405 for unknown
routes, 408 for a request that stops arriving and 413 for a body too large (limits.py),
415 for a POST that is not JSON, 503 while the model loads or when it computes NaN. A
client's mistake is logged on one line; an unexpected exception is logged with its
traceback and answered 400 (the request could not be served) or 503, never with a 500
and a traceback for the client.

Layers, each importing only those below it: this module (the app, the routes), then one
adapter per API (openai_api, llama_api, embeddings_api, responses_api, anthropic_api)
over what they share (api_common: validation, errors, the event loop that makes
responses), then the slot pool (slots), then the compute thread (scheduler), which runs
the engine's decoding step and, between its steps, the work that needs no slot
(embeddings). Under /v1/messages every error answer, from any layer, is rewritten in
Anthropic's shape (anthropic_api.ErrorShape).

GET /openapi.json describes the routes and their request bodies (bodies.py declares them,
and checks each body against its model before the route runs). There is no /docs page:
Swagger UI loads its scripts from a CDN (this server fetches and serves nothing from the
network), and behind --api-key a browser could not open it; OpenAPI tools read the schema.
"""
from __future__ import annotations

import hmac
import socket
import threading
import time
import traceback
import webbrowser
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from . import anthropic_api, bodies, embeddings_api, llama_api, openai_api, responses_api
from .api_common import APIError, Options, State, error_body
from .limits import BodyReader, uvicorn_config
from .origin import CorsPolicy, HostCheck, is_json
from .slots import SlotPool

WEB = Path(__file__).resolve().parent.parent / "web"
PUBLIC = ("/", "/health", "/v1/health", "/favicon.ico")     # never behind the API key (llama-server's too)
KNOWN = ("/v1/chat/completions", "/v1/completions", "/completion", "/completions", "/apply-template", "/tokenize",
         "/detokenize", "/v1/models", "/props", "/slots", "/metrics", "/v1/embeddings", "/embedding", "/embeddings",
         "/v1/responses", "/v1/messages", "/v1/messages/count_tokens")   # paths counted by name when refused
INPUT_ERRORS = (ValueError, TypeError, LookupError, ArithmeticError, UnicodeError, RecursionError)


def error_response(status: int, message: str, type: str, code=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(message, type, None, code), status_code=status, headers=headers)


def attach_model(state: State, llm) -> None:
    """Make the model servable: one engine per slot, all sharing the weights."""
    engines = [llm.engine] + [llm.engine.spawn() for _ in range(state.options.parallel - 1)]
    state.pool = SlotPool(engines, state.metrics)
    state.llm = llm                                  # last: a non-None llm means ready


def create_app(llm, options: Options | object | None = None) -> FastAPI:
    """The app. `llm`: a loaded model, or a function that loads one (the server answers
    503 on /health and the API until it returns). `options`: an Options, or the parsed
    command line."""
    if options is None:
        options = Options()
    elif not isinstance(options, Options):
        options = Options.from_args(options)
    state = State(options)
    loader: Callable | None = None
    if callable(llm) and not hasattr(llm, "engine"):
        loader = llm
    else:
        attach_model(state, llm)

    def load() -> None:
        try:
            attach_model(state, loader())
        except Exception as e:                       # reported by /health
            state.load_error = f"{type(e).__name__}: {e}"
            state.log(f"loading failed: {state.load_error}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if loader is not None:
            threading.Thread(target=load, name="load-model", daemon=True).start()
        yield
        if state.pool is not None:
            state.pool.shutdown()                    # running generations stop at their next token

    app = FastAPI(title="gemma-runner", docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  lifespan=lifespan)
    app.state.gemma = state
    # Starlette wraps the last added middleware around the rest. Guard is the outermost one
    # that answers requests, CORS included (so that preflights pass the Host check first
    # and its own error answers carry the CORS headers); ErrorShape, outside it, answers
    # nothing and only rewrites the error bodies of Anthropic's routes, Guard's 401 and
    # 503 included.
    app.add_middleware(Guard, state=state)
    app.add_middleware(anthropic_api.ErrorShape)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> Response:
        if e.status < 500:                           # a client's mistake: one line, no traceback
            state.log(f"{request.method} {request.url.path}: {e.status} {e.message}")
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return error_response(e.status_code, message, kind, e.status_code, getattr(e, "headers", None))

    install_routes(app, state)
    bodies.publish(app)
    return app


class Guard:
    """ASGI middleware (plain, so streams and disconnects pass through untouched), in this
    order: the Host check against DNS rebinding (origin.py; 403), CORS (the
    Access-Control-Allow-Origin header on every answer after it, for the origins
    --cors-origins allows; OPTIONS preflights answered here, without credentials), the
    API key (401), a JSON content type on POST (415), 503 while loading, bounds on the
    request body (limits.BodyReader), a clean answer for unexpected exceptions, request
    counts."""

    def __init__(self, app, state: State):
        self.app, self.state = app, state
        self.hosts = HostCheck(state.options.host, state.options.allowed_hosts)
        self.cors = CorsPolicy(state.options.cors_origins)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, path, method = self.state, scope["path"], scope["method"]
        counted = path if path in KNOWN else "other"
        host = header(scope, b"host")
        if not self.hosts.allows(host):
            state.metrics.request(counted, 403)
            state.log(f"{method} {path}: 403 Host {host!r} refused (a DNS rebinding attempt, or a name for "
                      f"--allowed-hosts)")
            return await error_response(403, f"this server does not answer to the host name {host!r}: it is bound "
                                        f"to a loopback address and answers to localhost, 127.0.0.1 and [::1] "
                                        f"(--allowed-hosts adds names)", "permission_error",
                                        "host_not_allowed")(scope, receive, send)
        origin = header(scope, b"origin")
        if method == "OPTIONS":                      # a CORS preflight: no credentials, no body
            state.metrics.request(counted, 204)
            allowed = self.cors.preflight(origin, header(scope, b"access-control-request-headers"))
            return await send_headers(Response(status_code=204, headers={"Allow": CorsPolicy.METHODS}),
                                      allowed)(scope, receive, send)
        cors = self.cors.headers(origin)
        if cors:
            send = with_headers(send, cors)
        public = path in PUBLIC or path.startswith("/web/")
        key = state.options.api_key
        if key and not public and not authorized(scope, key):
            state.metrics.request(counted, 401)
            return await error_response(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                                        "authentication_error", "invalid_api_key",
                                        headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        if method == "POST" and not is_json(header(scope, b"content-type")):
            # why: a form or text/plain POST needs no CORS preflight, so any web page could send one
            state.metrics.request(counted, 415)
            given = header(scope, b"content-type")
            return await error_response(415, f"send the request body as JSON with 'Content-Type: application/json' "
                                        f"(got {given or 'none'!r})", "invalid_request_error",
                                        "unsupported_media_type")(scope, receive, send)
        if state.llm is None and not public:
            state.metrics.request(counted, 503)
            return await loading_response(state)(scope, receive, send)
        options = state.options
        if content_length(scope) > options.max_body:
            return await error_response(413, f"the request body is larger than {options.max_body >> 20} MiB",
                                        "invalid_request_error", 413,
                                        headers={"Connection": "close"})(scope, receive, send)
        body = BodyReader(receive, options.timeout, options.max_body)
        status = None

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if body.failed:                      # the rest of the body may still come: hang up
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, body, send_status)
        except ClientDisconnect:                     # the client left before sending the whole body
            pass
        except Exception as e:                       # what no exception handler mapped
            if status is None:
                response = unexpected(state, scope, e)
                status = response.status_code
                await response(scope, receive, send)
            else:                                     # a stream already under way: only log it
                state.log(f"error in {scope['method']} {path} after the response began:\n"
                          f"{traceback.format_exc().rstrip()}")
        route = scope.get("route")
        state.metrics.request(getattr(route, "path", None) or "other", status or 0)


def with_headers(send, extra: list[tuple[bytes, bytes]]):
    """`send` that adds `extra` headers to the response."""
    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return wrapped


def send_headers(response: Response, extra: list[tuple[bytes, bytes]]) -> Response:
    response.raw_headers.extend(extra)
    return response


def header(scope, name: bytes) -> str | None:
    """A request header's value (the first, if repeated), or None."""
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return None


def content_length(scope) -> int:
    """The Content-Length the client announced (0 if none or unreadable)."""
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            return int(v) if v.isdigit() and len(v) < 20 else 0
    return 0


def authorized(scope, key: str) -> bool:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), key.encode())


def unexpected(state: State, scope, e: Exception) -> Response:
    """An exception no handler expected: logged in full, answered without a traceback."""
    state.log(f"error in {scope['method']} {scope['path']}:\n{traceback.format_exc().rstrip()}")
    if isinstance(e, INPUT_ERRORS):
        return error_response(400, f"the request could not be processed: {type(e).__name__}: {e}",
                              "invalid_request_error")
    return error_response(503, "the server could not process the request; see its log", "server_error")


def loading_response(state: State) -> Response:
    if state.load_error:
        return error_response(503, f"the model failed to load: {state.load_error}", "unavailable_error", 503)
    return error_response(503, "Loading model", "unavailable_error", 503)


def install_routes(app: FastAPI, state: State) -> None:
    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> Response:
        if state.llm is None:
            return loading_response(state)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> Response:
        llm = state.llm
        return JSONResponse({"object": "list", "data": [{
            "id": state.model_id, "object": "model", "created": state.started,
            "owned_by": "gemma-runner",
            "meta": {"name": llm.name, "n_ctx": llm.n_ctx, "n_vocab": llm.n_vocab}}]})

    @app.post("/v1/chat/completions", **bodies.route(bodies.ChatCompletionRequest))
    @app.post("/chat/completions", **bodies.route(bodies.ChatCompletionRequest, listed=False))
    async def chat_completions(request: Request) -> Response:
        return await openai_api.chat_completions(state, request)

    @app.post("/v1/completions", **bodies.route(bodies.CompletionRequest))
    async def completions(request: Request) -> Response:
        return await openai_api.completions(state, request)

    @app.post("/v1/embeddings", **bodies.route(bodies.EmbeddingRequest))
    async def embeddings(request: Request) -> Response:
        return await embeddings_api.openai_embeddings(state, request)

    @app.post("/embedding", **bodies.route(bodies.LlamaEmbeddingRequest))
    @app.post("/embeddings", **bodies.route(bodies.LlamaEmbeddingRequest, listed=False))
    async def embedding(request: Request) -> Response:
        return await embeddings_api.llama_embeddings(state, request)

    @app.post("/v1/responses", **bodies.route(bodies.ResponsesRequest))
    @app.post("/responses", **bodies.route(bodies.ResponsesRequest, listed=False))
    async def responses(request: Request) -> Response:
        return await responses_api.create(state, request)

    @app.post("/v1/messages", **bodies.route(bodies.MessagesRequest, anthropic=True))
    async def messages(request: Request) -> Response:
        return await anthropic_api.messages(state, request)

    @app.post("/v1/messages/count_tokens", **bodies.route(bodies.CountTokensRequest, anthropic=True))
    async def count_tokens(request: Request) -> Response:
        return await anthropic_api.count_tokens(state, request)

    @app.post("/completion", **bodies.route(bodies.LlamaCompletionRequest))
    # llama-server's alias of /completion, not of /v1/completions
    @app.post("/completions", **bodies.route(bodies.LlamaCompletionRequest, listed=False))
    async def completion(request: Request) -> Response:
        return await llama_api.completion(state, request)

    @app.post("/tokenize", **bodies.route(bodies.TokenizeRequest))
    async def tokenize(request: Request) -> Response:
        return await llama_api.tokenize(state, request)

    @app.post("/apply-template", **bodies.route(bodies.ApplyTemplateRequest))
    async def apply_template(request: Request) -> Response:
        return await llama_api.apply_template(state, request)

    @app.post("/detokenize", **bodies.route(bodies.DetokenizeRequest))
    async def detokenize(request: Request) -> Response:
        return await llama_api.detokenize(state, request)

    @app.get("/props")
    async def props() -> Response:
        return JSONResponse(llama_api.props(state))

    @app.get("/slots")
    async def slots() -> Response:
        return JSONResponse(llama_api.slots(state))

    @app.get("/metrics")
    async def metrics() -> Response:
        pool = state.pool
        return PlainTextResponse(state.metrics.render(pool.busy, pool.waiting, len(pool.slots)),
                                 media_type="text/plain; version=0.0.4",
                                 headers={"Process-Start-Time-Unix": str(state.started)})

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/web", StaticFiles(directory=WEB), name="web")


# -- running it -----------------------------------------------------------------------------

def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6); OSError with a clear message."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise OSError(f"cannot resolve --host {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror} (choose another --port)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def browse_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def open_browser(url: str) -> None:
    """Open a tab in a thread; no browser (a server, a container) is not an error."""
    def go() -> None:
        try:
            webbrowser.open(url, new=2)
        except Exception:
            pass
    threading.Thread(target=go, name="browser", daemon=True).start()


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread (port 0: a free one) until the
    block ends; yields the base URL. For tests and benchmarks."""
    import uvicorn
    sock = listen(host, port)
    server = uvicorn.Server(uvicorn_config(app, app.state.gemma.options, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield browse_url(host, sock.getsockname()[1]).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def run(llm, args, name: str = "") -> int:
    """Serve `llm`, or a function that loads it: then the server listens at once and
    answers 503 until the model is ready."""
    import uvicorn
    from ..args import die
    options = Options.from_args(args)
    failed: list[Exception] = []
    if callable(llm) and not hasattr(llm, "engine"):
        loader = llm

        def source():
            try:
                llm = loader()
                llm.engine.probe()                    # NaN logits: refuse to serve, say why
                return llm
            except Exception as e:                    # a file that cannot be served: stop
                failed.append(e)
                server.should_exit = True
                raise
    else:
        name, source = name or llm.name, llm
    app = create_app(source, options)
    try:
        sock = listen(options.host, options.port)
    except OSError as e:
        return die(str(e))
    port = sock.getsockname()[1]
    url = browse_url(options.host, port)
    print(f"{name or 'gemma-runner'}: serving the chat page at {url} and the OpenAI API at {url}v1 "
          f"({options.parallel} slot{'s' if options.parallel > 1 else ''}; Ctrl-C stops)", flush=True)
    if CorsPolicy(options.cors_origins).any and not options.api_key:
        app.state.gemma.log("warning: --cors-origins '*' without --api-key: any web page you visit can use "
                            "this server")                # as llama-server warns
    config = uvicorn_config(app, options, log_level="info" if options.log else "critical", access_log=options.log,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if not options.nobrowser:
        def when_up() -> None:
            for _ in range(300):
                if server.started:
                    open_browser(url)
                    return
                time.sleep(0.1)
        threading.Thread(target=when_up, name="browser-when-up", daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    if failed:
        return die(str(failed[0]))
    return 0
