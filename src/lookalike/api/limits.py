"""Refuse oversized request bodies before they are read: by the Content-Length header when there is one,
or as soon as a streamed (chunked) body passes the limit. An upload never has to fit in memory or on disk
to be refused."""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Multipart framing and the small form fields beside the image.
FORM_OVERHEAD = 64 * 1024


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return (f"upload is larger than the server's limit of {limit / 1024 / 1024:g} MB; "
            "send a smaller image (or start the server with a larger --max-upload-mb)")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_upload_bytes: int):
        self.app = app
        self.image_limit = max_upload_bytes
        self.body_limit = max_upload_bytes + FORM_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.body_limit:
            await _refuse(send, too_large_message(self.image_limit))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.body_limit:
                    # An HTTPException: FastAPI passes it through its body parsing untouched.
                    raise BodyTooLarge(self.image_limit)
            return message

        await self.app(scope, limited_receive, send)


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
