"""`create_app(settings)`: the REST API and the web page, with the catalog and its model opened once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..core.errors import (
    ImageError,
    ItemExistsError,
    LookalikeError,
    NotAnImageError,
    QueryError,
    StoreUnavailableError,
    UnknownItemError,
)
from ..core.version import __version__
from .limits import BodyLimitMiddleware
from .routes import router
from .service import CatalogService
from .settings import ServeSettings

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
        title="lookalike", version=__version__, lifespan=lifespan,
        description="Find the catalog products that look like a photo. Read endpoints are open; adding and "
                    "deleting items needs the server's admin token.",
    )
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    app.include_router(router)

    @app.exception_handler(LookalikeError)
    async def lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        status = next(code for kind, code in STATUS_BY_ERROR if isinstance(exc, kind))
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(WEB_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

    return app
