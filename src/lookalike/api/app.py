"""`create_app(settings)`: the REST API and the web page, with the catalog and its model opened once."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import (
    ImageError,
    ItemExistsError,
    LookalikeError,
    NotAnImageError,
    NoTextModelError,
    QueryError,
    StoreUnavailableError,
    UnknownItemError,
)
from ..core.version import __version__
from .limits import BodyLimitMiddleware
from .multipart import FilenameStarMiddleware, HeadMiddleware, body_problem
from .routes import router
from .service import CatalogService
from .settings import ServeSettings, cors_origins, env_name

log = logging.getLogger(__name__)

WEB_DIR = resources.files("lookalike") / "web"

# Most specific first: the first class an error is an instance of gives the status.
STATUS_BY_ERROR: list[tuple[type[LookalikeError], int]] = [
    (StoreUnavailableError, 503),  # the catalog's database is down or restarting: retry
    (NotAnImageError, 415),  # not an image at all
    (ImageError, 422),  # corrupt, truncated, decompression bomb
    (UnknownItemError, 404),
    (ItemExistsError, 409),
    (QueryError, 422),  # bad k, where, id
    (LookalikeError, 400),
]

# Library messages end in advice for the terminal (`lookalike status`, --max-pixels), which the CLI prints as
# it is. At the HTTP edge that advice is replaced by what an API client can do, by the error's kind; the
# reason before it is kept. (kind, text the message holds ("" for any), advice)
API_ADVICE: list[tuple[type[LookalikeError], str, str]] = [
    (ImageError, "--max-pixels", f"send a smaller image (the limit is the server setting {env_name('max_pixels')})"),
    (UnknownItemError, "", "GET /api/items lists the catalog"),
    (NoTextModelError, "", "words need a catalog built with a text+image model ({models})"),
]
# A clause ("(...)" or "; ...") that names a CLI command or option.
_CLI = r"(?:`lookalike\b|(?<![\w-])--[a-z])"
_CLI_ADVICE = re.compile(rf"\s*\([^()]*{_CLI}[^()]*\)|;[^;]*{_CLI}[^;]*")
MAX_PATH_SHOWN = 200


def create_app(settings: ServeSettings, service: CatalogService | None = None) -> FastAPI:
    """Build the app. ``service`` passes a catalog already opened (the CLI opens it first, so a missing
    catalog or model is one line on the terminal); otherwise startup opens it.

    The app owns the service: it is closed at shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = service or CatalogService(settings)
        app.state.service = svc
        log.info("serving %s: %d items", svc.catalog.name, svc.size())
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(
        title="lookalike", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Find the catalog products that look like a photo. Read endpoints are open; adding and "
                    "deleting items needs the server's admin token.",
    )
    app.state.settings = settings
    app.add_middleware(FilenameStarMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes,
                       body_timeout=settings.body_timeout)
    app.add_middleware(HeadMiddleware)  # HEAD answers as GET, without the body
    origins = cors_origins(settings)
    if origins:  # outermost: even a refused upload's answer carries the Access-Control-* headers
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "HEAD", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Admin-Token"], max_age=600)
    app.include_router(router)

    # Every error is one JSON line: {"detail": "<one line>"}, never the request's own bytes.
    @app.exception_handler(LookalikeError)
    async def lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        status = next(code for kind, code in STATUS_BY_ERROR if isinstance(exc, kind))
        headers = {"Retry-After": "1"} if status == 503 else None
        return error_response(status, api_message(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code < 200 or exc.status_code in (204, 205, 304):  # answers without a body
            return Response(status_code=exc.status_code, headers=exc.headers)
        return error_response(exc.status_code, http_message(request, exc), exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log (Starlette logs it after this answer), not to the client.
        return error_response(500, "internal server error; the server's log has the details")

    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(WEB_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

    _self_hosted_docs(app)

    return app


MAX_QUOTED = 60  # characters of a client's value that an error message may quote
MAX_DETAIL = 600  # and of a whole detail line
_QUOTED = re.compile(r"(?<!\w)'(?:[^'\\]|\\.)*'(?!\w)|(?<!\w)\"(?:[^\"\\]|\\.)*\"(?!\w)")


DOCS_ASSETS = "/docs-assets"


def _self_hosted_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts and styles served from the installed fastapi-offline
    package, not a CDN (FastAPI's "self-hosting JavaScript and CSS for docs"): the API page works offline."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html

    assets = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> Response:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                                   oauth2_redirect_url="/docs/oauth2-redirect",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> Response:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


def error_response(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": capped(one_line(detail))}, status_code=status, headers=dict(headers or {}))


def capped(detail: str) -> str:
    """A detail line that never echoes a long request value: each quoted value is cut to ``MAX_QUOTED``
    characters, the line to ``MAX_DETAIL``."""
    def cut(match: re.Match) -> str:
        text = match.group(0)
        return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED - 4]}...{text[-1]}"

    detail = _QUOTED.sub(cut, detail)
    return detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL - 3] + "..."


def one_line(text: str) -> str:
    return " ".join(text.split())


def api_message(exc: LookalikeError) -> str:
    """The library's message for an API client: CLI advice replaced by the kind's API advice (API_ADVICE)."""
    text = one_line(str(exc))
    reason = _CLI_ADVICE.sub("", text).strip()
    if reason == text:
        return text
    advice = next((adv for kind, marker, adv in API_ADVICE if isinstance(exc, kind) and marker in text), "")
    if "{models}" in advice:
        from ..models.registry import text_models

        advice = advice.format(models=", ".join(text_models()))
    return f"{reason}; {advice}" if advice else reason


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """``field: what is wrong`` for each error, joined by "; ". Only the field and pydantic's message are
    kept: the error's ``input`` (a whole upload, when a file came as a text field) is never echoed."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        field = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "request")
        msg = str(error.get("msg", "invalid value"))
        if "UploadFile" in msg:  # the part came as a text field: no filename in its Content-Disposition
            msg = 'expected a file: send it as a multipart part with a filename="..."'
        parts.append(f"{field}: {msg}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def http_message(request: Request, exc: StarletteHTTPException) -> str:
    """An HTTPException's detail as one line; the framework's bare "Not Found" and "Method Not Allowed" (no
    such route) say what was asked and where the API is described."""
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    try:
        bare = detail == HTTPStatus(exc.status_code).phrase
    except ValueError:
        bare = False
    if exc.status_code == 400 and detail in ("Invalid multipart data.", "There was an error parsing the body"):
        return body_problem(request.scope) or "the multipart body is malformed; let your HTTP client build it " \
                                                "(e.g. curl -F image=@photo.jpg)"
    if not bare:
        return detail
    asked = f"{request.method} {request.url.path[:MAX_PATH_SHOWN]}"
    if exc.status_code == 404:
        return f"nothing at {asked}; the API is described at /docs"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return f"{asked} is not allowed" + (f"; use {allowed}" if allowed else "") + " (the API is described at /docs)"
    return detail
