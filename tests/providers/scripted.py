"""A loopback HTTP/1.1 server that plays scripted answers and records every request it got.

Shared by the HTTP client's tests and the shared budget's (a real server, so retries, headers and
connection reuse are what a provider would see).
"""

from __future__ import annotations

import email.utils
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int = 200
    body: bytes | dict | str = b'{"ok": true}'
    headers: dict = field(default_factory=dict)
    truncate_to: int | None = None  # send only this many body bytes, then drop the connection
    delay_s: float = 0.0


class ScriptedServer:
    """A loopback HTTP/1.1 server answering from a queue; it records every request it got.

    Its `Date` header reads `now` (epoch seconds; the real clock by default), so a test can give the
    server a clock of its own; an answer's own "Date" header replaces it ("" sends none)."""

    def __init__(self, now=time.time):
        self.now = now
        self.answers: queue.Queue[Answer] = queue.Queue()
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "port": self.client_address[1]}
                )
                try:
                    answer = outer.answers.get_nowait()
                except queue.Empty:
                    answer = Answer(500, b'{"message": "script exhausted"}')
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                body = answer.body
                if isinstance(body, dict):
                    body = json.dumps(body).encode()
                elif isinstance(body, str):
                    body = body.encode()
                try:
                    self.send_response_only(answer.status)
                    date = email.utils.formatdate(outer.now(), usegmt=True)
                    headers = {"Server": "scripted", "Date": date, "Content-Type": "application/json", **answer.headers}
                    for name, value in headers.items():
                        if value != "":
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if answer.truncate_to is not None:
                        self.wfile.write(body[: answer.truncate_to])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def script(self, *answers: Answer) -> None:
        for a in answers:
            self.answers.put(a)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
