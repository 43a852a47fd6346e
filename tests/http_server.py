"""A tiny HTTP server on 127.0.0.1 for the download tests: serves files by URL path (query included), honours
``Range: bytes=N-`` (206, or 416 past the end), can cut a response after K bytes once, answer a status code
instead, ignore ranges, imitate a login site (a form that sets a session cookie, files behind it) and a Hugging
Face hub endpoint (``add_hub_file``: the HEAD headers ``huggingface_hub`` reads)."""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Path] = {}
        self.cut_once: dict[str, int] = {}  # path -> bytes to send before closing the connection (once)
        self.status: dict[str, int] = {}  # path -> status code to answer instead
        self.ignore_range = False
        self.range_from_zero = False  # answer 206 but send the file from byte 0 (a restarted server)
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.head_headers: dict[str, dict[str, str]] = {}  # path -> extra headers of a HEAD answer
        self.login: tuple[str, str] | None = None  # (username, password) the login form accepts
        self.login_without_redirect = False  # answer a good login with a page (and a cookie), not a 302
        self.protected: set[str] = set()  # paths that need the session cookie
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, path: str, file: Path, protected: bool = False) -> str:
        self.routes[path] = Path(file)
        if protected:
            self.protected.add(path)
        return f"{self.url}{path}"

    def add_hub_file(self, repo: str, revision: str, filename: str, served: Path, commit=None, sha256=None) -> str:
        """Serve ``served`` as the hub serves ``filename`` of ``repo`` at ``revision`` and at its ``commit``
        (default: ``revision`` is one): a HEAD answers the commit (``X-Repo-Commit``), the LFS sha256
        (``X-Linked-Etag``: ``sha256``, by default the served bytes') and the size (``X-Linked-Size``).
        Returns the commit."""
        commit = commit or revision
        sha256 = sha256 or hashlib.sha256(Path(served).read_bytes()).hexdigest()
        size = str(Path(served).stat().st_size)
        headers = {"X-Repo-Commit": commit, "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": size}
        for rev in dict.fromkeys((revision, commit)):
            route = f"/{repo}/resolve/{rev}/{filename}"
            self.add(route, served)
            self.head_headers[route] = headers
        return commit

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GET requests for ``path``."""
        return [rng for method, p, rng in self.log if method == "GET" and p == path]


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _html(self, text: str, cookie: str | None = None) -> None:
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.log.append(("POST", self.path, None))
        length = int(self.headers.get("Content-Length", 0))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        ok = self.server.login and (form.get("username"), form.get("password")) == self.server.login
        ok = ok and form.get("submit") == "Login"
        if ok and not self.server.login_without_redirect:  # the real site: 302 to the downloads page
            self.send_response(302)
            self.send_header("Location", "/downloads/")
            self.send_header("Set-Cookie", "session=ok; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._html("welcome" if ok else "login failed", "session=ok; Path=/" if ok else "tracking=1; Path=/")

    def do_HEAD(self) -> None:
        self.server.log.append(("HEAD", self.path, None))
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        self.send_response(200)
        for name, value in self.server.head_headers.get(self.path, {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(self.server.routes[self.path].stat().st_size))
        self.end_headers()

    def do_GET(self) -> None:
        srv, path = self.server, self.path
        srv.log.append(("GET", path, self.headers.get("Range")))
        if path in srv.status:
            self.send_error(srv.status[path])
            return
        if path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path not in srv.routes:
            self.send_error(404)
            return
        if path in srv.protected and "session=ok" not in (self.headers.get("Cookie") or ""):
            self._html("<form>please log in</form>")
            return
        data = srv.routes[path].read_bytes()
        start, rng = 0, self.headers.get("Range")
        if rng and srv.range_from_zero:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
        elif rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if path in srv.cut_once:
            body = body[: srv.cut_once.pop(path)]
            self.close_connection = True
        self.wfile.write(body)
        self.wfile.flush()
