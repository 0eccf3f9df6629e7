"""An HTTP proxy in front of an S3 server that answers a share of requests with faults.

Faults: 503 SlowDown (throttling), 500 InternalError, a connection reset before any answer, and an
answer cut off halfway through its body (after the server has acted on the request). Each request
is classified by S3 operation (get, put, list, create-multipart, upload-part, complete-multipart,
...); the first request of each operation in `first` fails with the fault given there, so each of
them is known to have been retried, and the rest fail at random (seeded) with probability `share`.
The proxy drops the request headers named in `unconditional` (If-Match, If-None-Match), as S3-compatible
stores that do not support conditional writes ignore them.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("slowdown", "internal", "reset", "cut")
_ERRORS = {"slowdown": (503, "SlowDown", "Please reduce your request rate."), "internal": (500, "InternalError", "We encountered an internal error.")}


def operation(method: str, path: str, query: str) -> str:
    if method == "POST" and "uploads" in query.split("&"):
        return "create_multipart"
    if method == "POST" and "uploadId=" in query:
        return "complete_multipart"
    if method == "PUT" and "partNumber=" in query:
        return "upload_part"
    if method == "GET" and path.count("/") <= 1 or "list-type=" in query:
        return "list"
    return {"GET": "get", "HEAD": "head", "PUT": "put", "DELETE": "delete"}.get(method, method.lower())


class FaultyS3:
    """`with FaultyS3(upstream, share=0.15) as proxy:` then point AWS_ENDPOINT_URL at `proxy.url`."""

    def __init__(self, upstream: str, share: float = 0.15, seed: int = 0, first: dict[str, str] | None = None,
                 unconditional: tuple[str, ...] = ()):
        self.upstream, self.unconditional = urlsplit(upstream), tuple(h.lower() for h in unconditional)
        self.share, self.first = share, dict(first or {})
        self.rng, self.lock = random.Random(seed), threading.Lock()
        self.requests: Counter = Counter()
        self.faults: Counter = Counter()  # (operation, fault) -> count
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _fault_for(self, op: str) -> str | None:
        with self.lock:
            self.requests[op] += 1
            if op in self.first:
                fault = self.first.pop(op)
            elif self.rng.random() < self.share:
                fault = self.rng.choice(FAULTS)
            else:
                return None
            self.faults[op, fault] += 1
            return fault

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()
                path, _, query = self.path.partition("?")
                fault = proxy._fault_for(operation(self.command, path, query))
                if fault == "reset":  # before the server saw the request
                    self._reset()
                    return
                if fault in _ERRORS:
                    status, code, message = _ERRORS[fault]
                    error = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                dropped = ("transfer-encoding", "connection", *proxy.unconditional)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                if fault == "cut" and not data:  # the server acted; its answer is lost
                    self._reset()
                    return
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if fault == "cut":  # the server acted; the client sees half an answer
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._reset()
                elif self.command != "HEAD":
                    self.wfile.write(data)

            def _reset(self) -> None:
                """Close the connection with an RST."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
