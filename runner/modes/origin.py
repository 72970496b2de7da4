"""Which requests may reach the API from a browser: the Host a request names, and the
content type of a POST.

DNS rebinding: a web page on evil.example can make its own name resolve to 127.0.0.1, and
the browser then lets it read the local server's answers, since they come "from"
evil.example. The request still says `Host: evil.example`, so a server bound to a loopback
address answers only requests that name it by a loopback name: localhost (and
*.localhost, which always resolves to loopback), 127.x.y.z, [::1], with any port, plus
the names --allowed-hosts adds. This is the check Ollama added for CVE-2024-28224 (it
also takes private addresses and the machine's name; llama.cpp's server has none).
A server bound to another address is reached by names we cannot know: it answers every
Host, and --api-key is what guards it.

Cross-site requests: any page may POST a form or a `text/plain` body to any address
without asking (no CORS preflight), and a JSON body sent as text/plain would start a
generation. A POST must therefore say `Content-Type: application/json` (or a `+json`
type), which only a same-origin page, or one that CORS allows, can send.
"""
from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Is `host` (a --host value) a loopback address, or a name resolving only to them?"""
    host = host.strip("[]").lower()
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        found = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(a[4][0].split("%")[0]).is_loopback for a in found)


def host_name(header: str) -> str | None:
    """The name in a Host header, lower case, without port or trailing dot; None if the
    header is malformed."""
    h = header.strip().lower()
    if h.startswith("["):                          # [::1]:8080
        end = h.find("]")
        name, rest = h[1:end], h[end + 1:]
        if end < 0 or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, _, port = h.partition(":")
    if port and not port.isdigit():                # also a bare IPv6 address, which HTTP forbids
        return None
    return name.rstrip(".")


class HostCheck:
    """The Host names a server bound to `bind` accepts (see the module's docstring).
    `allowed`: extra names; ".example.org" also allows its subdomains, "*" any name."""

    def __init__(self, bind: str, allowed: tuple[str, ...] = ()):
        names = {a.strip().lower().rstrip(".") for a in allowed if a.strip()}
        self.active = "*" not in names and is_loopback(bind)
        self.names = {n for n in names if not n.startswith(".")}
        self.domains = tuple(n for n in names if n.startswith("."))

    def allows(self, header: str | None) -> bool:
        if not self.active or not header:          # no Host: HTTP/1.0, never a browser
            return True
        name = host_name(header)
        if name is None:
            return False
        if name in LOOPBACK_NAMES or name.endswith(".localhost") or name in self.names \
                or any(name.endswith(d) or name == d[1:] for d in self.domains):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


def is_json(content_type: str | None) -> bool:
    """Is this Content-Type JSON (application/json or application/...+json, any parameters)?"""
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class CorsPolicy:
    """Which other origins' pages may read the API's answers (CORS), from --cors-origins:
    "*" any, "localhost" pages served from a loopback origin (the default; any scheme and
    port), "none" no other page, or a comma-separated list of exact origins
    ("https://app.example.org,chrome-extension://ID"). llama-server allows "*" by default;
    here "*" is a choice, since any site's page could then drive a local model (see the
    module's docstring)."""

    METHODS = "GET, POST, OPTIONS"

    def __init__(self, origins: str = "localhost"):
        items = {o.strip().rstrip("/") for o in origins.split(",") if o.strip()}
        self.any = "*" in items
        self.local = "localhost" in items
        self.exact = {o.lower() for o in items - {"*", "localhost", "none"}}

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        if origin.lower() in self.exact:
            return True
        if not self.local or "://" not in origin:
            return False
        name = host_name(origin.split("://", 1)[1])
        if not name:
            return False
        if name in LOOPBACK_NAMES or name.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """The Access-Control-Allow-Origin header (and Vary) for a request from `origin`;
        none when it has no Origin or the origin is not allowed."""
        if not origin or not self.allows(origin):
            return []
        if self.any:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    def preflight(self, origin: str | None, requested_headers: str | None) -> list[tuple[bytes, bytes]]:
        """The headers of the answer to an OPTIONS request: the methods, and the request
        headers it asked for (named, since a "*" would not cover Authorization)."""
        out = self.headers(origin)
        if out:
            out += [(b"access-control-allow-methods", self.METHODS.encode()), (b"access-control-max-age", b"600")]
            if requested_headers:
                out.append((b"access-control-allow-headers", requested_headers.encode("latin-1")))
        return out
