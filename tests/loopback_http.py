"""A loopback HTTP server over a folder for the tests, with faults on demand (5xx, a dropped stream)."""
from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List


class _Handler(http.server.SimpleHTTPRequestHandler):
    faults: Dict[str, List[str]]  # url path -> what the next requests get: '500', 'drop' (half the body, then close)
    requests: Counter

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.requests[self.path] += 1
        queue = self.faults.get(self.path)
        fault = queue.pop(0) if queue else None
        if fault == "500":
            self.send_error(500, "injected fault")
            return
        if fault == "drop":
            body = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def serve(root: Path, faults: Dict[str, List[str]] | None = None) -> Iterator[tuple[str, Counter]]:
    """(base URL on 127.0.0.1, request counter per path) of a server over ``root``, stopped on exit."""
    requests: Counter = Counter()
    handler = type("Handler", (_Handler,), {"faults": faults or {}, "requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
