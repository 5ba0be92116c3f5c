"""Refuse oversized request bodies before they are read: by the Content-Length header when there is one,
or as soon as a streamed (chunked) body passes the limit. An upload never has to fit in memory or on disk
to be refused.

Any answer given before the request's body was read to its end (a refused upload, an unknown route, a
missing token) closes the connection, and a server that closes with unread bytes in its socket makes the
kernel reset the connection: a client that writes its whole body before reading (Python's urllib) then sees
"Connection reset by peer" instead of the answer. So such an answer is sent, then the rest of the body is
read and dropped (at most ``DRAIN_BYTES``, ``DRAIN_SECONDS``, and never waiting more than
``DRAIN_IDLE_SECONDS`` for the next bytes), then the connection closes."""

from __future__ import annotations

import json

import anyio
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import env_name

# Multipart framing and the small form fields beside the image.
FORM_OVERHEAD = 64 * 1024
# How much of an unread body is read and dropped after an early answer, so the client gets to read it.
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 5.0
DRAIN_IDLE_SECONDS = 1.0  # a client that announced a body but sends none (it waits for the answer first)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, too_large_message(limit))


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float):
        super().__init__(408, f"the request body stopped arriving (nothing for {seconds:g} s; server setting "
                              f"{env_name('body_timeout')}); send the whole body without pausing")


def too_large_message(limit: int) -> str:
    return (f"upload is larger than this server's limit of {limit / 1024 / 1024:g} MB "
            f"(server setting {env_name('max_upload_bytes')}); send a smaller image")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_upload_bytes: int, body_timeout: float = 30.0):
        self.app = app
        self.image_limit = max_upload_bytes
        self.body_limit = max_upload_bytes + FORM_OVERHEAD
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"]) if scope["type"] == "http" else {}
        length = headers.get(b"content-length")
        if length in (None, b"0") and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body: nothing to limit or drain
            return
        body = _Body(receive, self.body_limit, self.image_limit,
                     expects_continue=headers.get(b"expect", b"").lower() == b"100-continue",
                     timeout=self.body_timeout)
        if length is not None and length.isdigit() and int(length) > self.body_limit:
            payload = json.dumps({"detail": too_large_message(self.image_limit)}).encode()
            await body.answer_early(send, {
                "type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }, {"type": "http.response.body", "body": payload})
            return
        await self.app(scope, body.receive, body.send_through(send))


class _Body:
    """A request body read through this object: counted against the limit, and drained after an early
    answer."""

    def __init__(self, receive: Receive, limit: int, image_limit: int, expects_continue: bool,
                 timeout: float = 30.0):
        self._receive = receive
        self.timeout = timeout
        self.timed_out = False
        self.limit = limit
        self.image_limit = image_limit
        self.received = 0
        self.complete = False  # the last part of the body was read, or the client went away
        self.expects_continue = expects_continue  # and the client waits for "100 Continue" to send it

    async def receive(self) -> Message:
        """The next piece of the body; a client that sends nothing for ``timeout`` seconds is answered 408 and
        its connection closed (a connection that never sends its body must not stay open)."""
        if self.complete:
            message = await self._receive()
        else:
            with anyio.move_on_after(self.timeout) as waiting:
                message = await self._receive()
            if waiting.cancelled_caught:
                self.timed_out = True  # nothing to drain: the answer goes out and the connection closes
                raise BodyTimeout(self.timeout)
        self._count(message)
        if message["type"] == "http.request" and self.received > self.limit:
            # An HTTPException: FastAPI passes it through its body parsing untouched.
            raise BodyTooLarge(self.image_limit)
        return message

    def _count(self, message: Message) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = self.complete or not message.get("more_body", False)
        else:
            self.complete = True  # http.disconnect

    def send_through(self, send: Send) -> Send:
        """``send``, except that an answer given before the body was read to its end closes the connection
        only after draining the rest."""
        start: Message | None = None

        async def wrapped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and not self.complete:
                start = message  # held until the first body part: the app may still read the body
                return
            if start is not None and message["type"] == "http.response.body":
                held, start = start, None
                if not self.complete:
                    await self.answer_early(send, held, message)
                    return
                await send(held)
            await send(message)

        return wrapped

    async def answer_early(self, send: Send, start: Message, first: Message) -> None:
        """Send an answer while the body is unread: ``Connection: close``, the answer, the rest of the body
        read and dropped (bounded), then the end of the answer, on which the server closes."""
        if first.get("more_body", False):  # a streamed answer: stream it as is, without draining
            await send(start)
            await send(first)
            return
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"connection"]
        await send({**start, "headers": [*headers, (b"connection", b"close")]})
        await send({**first, "more_body": True})
        if not self.timed_out and not (self.expects_continue and self.received == 0):  # else nothing to drain
            await self._drain()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drain(self) -> None:
        drained = 0
        with anyio.move_on_after(DRAIN_SECONDS):
            while not self.complete and drained < DRAIN_BYTES:
                with anyio.move_on_after(DRAIN_IDLE_SECONDS) as idle:
                    message = await self._receive()
                if idle.cancelled_caught:
                    return
                before = self.received
                self._count(message)
                drained += self.received - before
