"""One sequence, one request at a time: a bounded queue in front of the model.

llama-cpp-python's server already serialises every request that touches the model behind
two ``anyio`` locks (a request waits for the one before it; none are ever interleaved), but
the wait is unbounded. :class:`BusyGate` counts the requests that are running or waiting
and answers HTTP 503 (OpenAI error JSON, ``Retry-After``) when ``max_queue`` are already
waiting behind the running one. A request is counted until its response is complete, the
whole stream included.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: requests that take the model lock upstream (POST only)
MODEL_PATH_PREFIXES = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/engines/", "/extras/")


class Queue:
    """Requests running or waiting for the model, shared by the gate and the stats endpoint."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_enter(self) -> bool:
        with self._lock:
            if self._in_flight >= 1 + self.max_queue:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


class BusyGate:
    def __init__(self, app: ASGIApp, queue: Queue) -> None:
        self.app = app
        self.queue = queue

    @property
    def max_queue(self) -> int:
        return self.queue.max_queue

    def _gated(self, scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and str(scope.get("path", "")).startswith(MODEL_PATH_PREFIXES)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._gated(scope):
            await self.app(scope, receive, send)
            return
        if not self.queue.try_enter():
            await self._busy(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.queue.leave()

    async def _busy(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "message": (
                        f"The server is busy: one request is running and {self.max_queue} are waiting. This server runs "
                        "a single sequence on one compressed KV cache, so it answers requests one at a time; retry shortly."
                    ),
                    "type": "server_busy",
                    "param": None,
                    "code": "server_busy",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", b"1"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
