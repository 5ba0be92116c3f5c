"""File parts named only in the RFC 5987 form, ``filename*=utf-8''%E5%95%86%E5%93%81.jpg``, are files.

Some clients name a non-ASCII file that way alone. python-multipart follows RFC 7578 (section 4.2 forbids the
extended form in multipart/form-data) and ignores ``filename*``, so Starlette takes such a part for a text
field: the upload is refused as "Expected UploadFile", and over 1 MB as an oversized field. This middleware
adds the plain ``filename="..."`` parameter to such parts' headers as the body streams through, so every
endpoint that takes an upload sees a file with its real name. The rest of the body passes untouched (the
Content-Length header is left as sent: the form parser reads to the end of the stream, not to a count).
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

        async def rewriting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                last = not message.get("more_body", False)
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


class PartHeaderRewriter:
    """Feeds a multipart body through in pieces; each part's header block gets a plain ``filename`` where it
    has only ``filename*``. Holds back at most a delimiter's length of body bytes (or one header block)."""

    def __init__(self, boundary: bytes):
        self.delimiter = b"\r\n--" + boundary
        self.buffer = b"\r\n"  # the first delimiter has no line break before it: pretend one
        self.pretended = 2  # bytes at the head of the output that are not the body's
        self.in_headers = False

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
