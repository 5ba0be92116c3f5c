"""What the API does to request bodies and methods on their way in, before FastAPI parses them.

File parts named only in the RFC 5987 form, ``filename*=utf-8''%E5%95%86%E5%93%81.jpg``, are files.

Some clients name a non-ASCII file that way alone. python-multipart follows RFC 7578 (section 4.2 forbids the
extended form in multipart/form-data) and ignores ``filename*``, so Starlette takes such a part for a text
field: the upload is refused as "Expected UploadFile", and over 1 MB as an oversized field. This middleware
adds the plain ``filename="..."`` parameter to such parts' headers as the body streams through, so every
endpoint that takes an upload sees a file with its real name. The rest of the body passes untouched (the
Content-Length header is left as sent: the form parser reads to the end of the stream, not to a count).

The same pass notes what the body looked like (``BodyShape``: did it start with its boundary, did it end with
the closing one, which parts it named), so a form that parsed to nothing can be explained (``body_problem``).
``HeadMiddleware`` answers HEAD as GET without the body.
"""

from __future__ import annotations

import re
from email.message import Message as EmailMessage
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_PART_HEADERS = 16 * 1024  # a longer header block is left as it is
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FilenameStarMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        boundary = _multipart_boundary(scope) if scope["type"] == "http" else None
        if boundary is None:
            await self.app(scope, receive, send)
            return
        rewriter = PartHeaderRewriter(boundary)
        shape = BodyShape(boundary)
        scope.setdefault("state", {})["body_shape"] = shape
        rewriter.names = shape.names

        async def rewriting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                last = not message.get("more_body", False)
                shape.feed(message.get("body", b""), last)
                message = {**message, "body": rewriter.feed(message.get("body", b""), last=last)}
            return message

        await self.app(scope, rewriting_receive, send)


def _multipart_boundary(scope: Scope) -> bytes | None:
    header = dict(scope["headers"]).get(b"content-type")
    if not header:
        return None
    parsed = EmailMessage()
    parsed["content-type"] = header.decode("latin-1")
    boundary = parsed.get_param("boundary")
    if parsed.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        return None
    return boundary.encode("latin-1")


class BodyShape:
    """What a multipart body looked like as it streamed in: whether it began with the declared boundary,
    whether its closing boundary came, and the names of its parts."""

    def __init__(self, boundary: bytes):
        self.boundary = boundary
        self.head = b""  # the first bytes, enough to see the first delimiter
        self.tail = b""  # the last bytes, enough to see the closing delimiter
        self.complete = False
        self.names: list[str] = []

    def feed(self, data: bytes, last: bool) -> None:
        keep = len(self.boundary) + 8
        if len(self.head) < keep + 64:
            self.head = (self.head + data)[:keep + 64]
        self.tail = (self.tail + data)[-keep:]
        self.complete = self.complete or last

    @property
    def starts_right(self) -> bool:
        return (b"\r\n" + self.head).find(b"--" + self.boundary) >= 0

    @property
    def closed(self) -> bool:
        return (b"--" + self.boundary + b"--") in self.tail


def body_problem(scope: Scope) -> str | None:
    """Why a request body gave no form fields, in one line, from its Content-Type and its shape; None when
    nothing looks wrong. Never quotes the body, and the Content-Type only cut short."""
    header = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1").strip()
    how = "send a multipart/form-data body (e.g. curl -F image=@photo.jpg, or a browser's FormData)"
    kind = header.split(";")[0].strip().lower()
    if not kind:
        return f"the request has no Content-Type and no form fields; {how}"
    if kind == "application/json":
        return f"this endpoint takes a form, not JSON; {how}"
    if kind.startswith("image/") or kind == "application/octet-stream":
        return f"the photo came as the raw body ({kind[:40]}), not as a form part named image; {how}"
    if kind == "application/x-www-form-urlencoded":
        return f"send a photo (image), words (text), or both; a url-encoded form cannot carry a photo: {how}"
    if kind != "multipart/form-data":
        return f"this endpoint takes multipart/form-data, not {kind[:40]}; {how}"
    shape = scope.get("state", {}).get("body_shape")
    if shape is None:
        return f"the multipart Content-Type names no boundary; {how}"
    if shape.head and not shape.starts_right:
        return ("the body does not begin with the boundary its Content-Type declares (a wrong or stale "
                f"boundary=); let the HTTP client build the body: {how}")
    if shape.complete and not shape.closed:
        return ("the multipart body ended without its closing boundary (--BOUNDARY--): it was cut short or "
                f"built by hand; {how}")
    return None


class HeadMiddleware:
    """HEAD is answered as GET would be (status and headers, Content-Length included), without the body."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def bodiless(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, bodiless)


class PartHeaderRewriter:
    """Feeds a multipart body through in pieces; each part's header block gets a plain ``filename`` where it
    has only ``filename*``. Holds back at most a delimiter's length of body bytes (or one header block)."""

    def __init__(self, boundary: bytes):
        self.delimiter = b"\r\n--" + boundary
        self.buffer = b"\r\n"  # the first delimiter has no line break before it: pretend one
        self.pretended = 2  # bytes at the head of the output that are not the body's
        self.in_headers = False
        self.names: list[str] = []  # each part's name, in order

    def feed(self, data: bytes, last: bool = False) -> bytes:
        self.buffer += data
        out: list[bytes] = []
        while True:
            if self.in_headers:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_PART_HEADERS:
                        out.append(self.buffer)
                        self.buffer, self.in_headers = b"", False
                    break
                self.names.append(part_name(self.buffer[:end]))
                out.append(with_plain_filename(self.buffer[:end]))
                out.append(self.buffer[end:end + 4])
                self.buffer, self.in_headers = self.buffer[end + 4:], False
            else:
                at = self.buffer.find(self.delimiter)
                if at < 0:
                    cut = max(0, len(self.buffer) - len(self.delimiter) + 1)  # keep a delimiter's beginning
                    out.append(self.buffer[:cut])
                    self.buffer = self.buffer[cut:]
                    break
                end = at + len(self.delimiter)
                out.append(self.buffer[:end])
                self.buffer, self.in_headers = self.buffer[end:], True
        if last:
            out.append(self.buffer)
            self.buffer = b""
        result = b"".join(out)
        if self.pretended:
            dropped = min(self.pretended, len(result))
            result, self.pretended = result[dropped:], self.pretended - dropped
        return result


def with_plain_filename(headers: bytes) -> bytes:
    """A part's header block, with ``; filename="<decoded filename*>"`` added to a Content-Disposition that
    has ``filename*`` and no ``filename``."""
    lines = headers.split(b"\r\n")
    for i, line in enumerate(lines):
        name, colon, value = line.partition(b":")
        if not colon or name.strip().lower() != b"content-disposition":
            continue
        params = {key.lower(): val for key, val in _PARAM.findall(value.decode("latin-1"))}
        if "filename*" in params and "filename" not in params:
            filename = decode_rfc5987(params["filename*"])
            escaped = _CONTROL.sub("", filename).replace("\\", "\\\\").replace('"', '\\"')
            lines[i] = line + b'; filename="' + escaped.encode("utf-8") + b'"'
    return b"\r\n".join(lines)


def part_name(headers: bytes) -> str:
    """The ``name`` of a part from its header block ("" when it has none)."""
    for line in headers.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-disposition":
            params = {key.lower(): val for key, val in _PARAM.findall(value.decode("latin-1"))}
            return params.get("name", "").strip('"')
    return ""


def decode_rfc5987(value: str) -> str:
    """``utf-8''%E5%95%86.jpg`` (charset, language, percent-encoded bytes) -> the name."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    charset, _, rest = value.partition("'")
    _, _, encoded = rest.partition("'")
    if not rest:
        charset, encoded = "utf-8", value
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return unquote(encoded, encoding="utf-8", errors="replace")
