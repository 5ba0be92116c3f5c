"""Thin routers: parse the request, call the service, shape the answer. Errors from the library become
HTTP answers in app.py, the one edge that knows about status codes."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError

from ..catalog.catalog import MAX_TEXT_CHARS, CatalogItem
from ..catalog.query import Match, parse_where, photo_gone
from ..catalog.ranking import Ranking
from ..core import storage
from ..core.errors import ImageError
from ..core.images import image_media_type
from ..core.version import __version__
from ..models.detector import DEFAULT_MAX_BOXES, DEFAULT_THRESHOLD, MAX_WORDS, detector_name
from ..store.events import EventRecord
from .limits import too_large_message
from .multipart import body_problem
from .schemas import (
    Deleted,
    DetectResult,
    EventBatch,
    EventsStored,
    Health,
    Item,
    ItemPage,
    Predicted,
    Rules,
    SearchResult,
)
from .service import CatalogService
from .settings import env_name
from .thumbnails import DEFAULT_SIZE

router = APIRouter(prefix="/api")

CACHE_IMMUTABLE = "public, max-age=31536000, immutable"  # URLs carry the content hash (?v=...)

WhereParam = Annotated[list[str] | None, Query(description="label=value, repeat for more (all must hold)")]
Offset = Annotated[int, Query(ge=0)]
MinSimilarity = Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop results less similar")]


async def service(request: Request) -> CatalogService:  # async: no thread hop for a lookup
    return request.app.state.service


Service = Annotated[CatalogService, Depends(service)]


DEDUPE_HELP = ("one item per near-duplicate group (the groups `lookalike duplicates` saved; without them, one "
               "item per exact copy); a `similar` query also leaves out its own near-copies")


async def k_param(request: Request, k: Annotated[int, Query(ge=1, description="how many results")] = 10) -> int:
    return _check_k(request, k)


def _check_form(request: Request, *fields: str) -> None:
    """A form endpoint's fields come in its body: one in the URL (``?k=2``) is refused, never ignored; so is a
    second ``image`` part (one photo per query)."""
    in_url = [name for name in fields if name in request.query_params]
    if in_url:
        raise HTTPException(422, f"{in_url[0]}: send it as a form field in the multipart body, not in the URL "
                                 f"(?{in_url[0]}=...); POST /api/search reads its fields from the form")
    shape = request.scope.get("state", {}).get("body_shape")
    images = shape.names.count("image") if shape is not None else 0
    if images > 1:
        raise HTTPException(422, f"image: {images} image parts came; send one photo per search")


def _check_k(request: Request, k: int) -> int:
    limit = request.app.state.settings.max_k
    if k > limit:
        raise HTTPException(422, f"k={k} is over this server's limit of {limit} (server setting {env_name('max_k')})")
    return k


async def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None,
                  x_admin_token: Annotated[str | None, Header()] = None) -> None:
    """Writes need the token given to `lookalike serve --admin-token` (or LOOKALIKE_ADMIN_TOKEN)."""
    expected = request.app.state.settings.admin_token
    if expected is None:
        raise HTTPException(403, "this server is read-only: adding and deleting items needs a server started with "
                                 f"an admin token (server setting {env_name('admin_token')}, or --admin-token)")
    given = x_admin_token or (authorization[7:] if authorization and authorization.startswith("Bearer ") else "")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong admin token: send it as 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})


# -- read endpoints -----------------------------------------------------------------------------------


@router.get("/health", response_model=Health, summary="Is the server up, and what does it serve")
def health(svc: Service) -> Health:
    encoder = svc.encoder
    return Health(status="ok", version=__version__, items=svc.size(),
                          model=svc.catalog.config.embedder.describe(), device=str(encoder.device),
                          runtime=encoder.runtime, precision=encoder.precision,
                          writable=svc.settings.admin_token is not None, text=svc.catalog.has_text,
                  detect=svc.can_detect)


@router.get("/rules", response_model=Rules, summary="The catalog's default ranking rules (boost, bury, exclude, pin, "
            "diversity), applied to every search unless it sends rules=false")
def rules(svc: Service) -> Rules:
    defaults = svc._call(svc.catalog.rules).to_dict()
    return Rules(**{name: defaults[name] for name in Rules.model_fields if name in defaults})


BOX_HELP = ("search this region of the photo: x0,y0,x1,y1 as fractions of its width and height when all four lie "
            "in [0, 1] (e.g. 0.1,0.2,0.6,0.9), else pixels of the upright photo")
WORDS_HELP = ("what to look for in the photo, one word or phrase per field (repeat the field); default: the "
              "values of the catalog's category label (articleType, category, ...)")
LABEL_HELP = "without words: look for the values of this catalog label"
MAX_BOXES = 20
MAX_WORD_CHARS = 100
SIMILAR_TEXT_HELP = "more like this, but with these words (a catalog whose model has a text tower)"
RULES_HELP = "apply the catalog's default ranking rules (`lookalike rules show`); false: leave them out"
BOOST_HELP = "label=value or label=value:W: add W (default 0.1) to those items' similarity; repeat for more"
BURY_HELP = "label=value: those items go below every other result; repeat for more"
PIN_HELP = "a product id that comes first; repeat for more (in this order)"
EXCLUDE_HELP = "label=value: leave those items out; repeat for more"
DIVERSITY_HELP = "re-rank by maximal marginal relevance: 1 = similarity only, 0 = most varied (e.g. 0.7)"
RuleList = list[str] | None
KEYWORD_HELP = ("how much the keyword results (titles and labels) count against the vector results in reciprocal "
                "rank fusion: 0 = vectors only, 1 (default) = the same")
TEXT_HELP = ("words to look for: by the model's text tower, fused with keyword matches of the titles and labels "
             "(an image-only model: keywords alone); with a photo: this photo, but with "
             "these words")


@router.post("/search", response_model=SearchResult,
             summary="The catalog items most like an uploaded photo, words, or both")
def search(request: Request, svc: Service,
           image: Annotated[UploadFile | None, File(description="a photo")] = None,
           text: Annotated[str | None, Form(max_length=MAX_TEXT_CHARS, description=TEXT_HELP)] = None,
           k: Annotated[int, Form(ge=1)] = 10, where: Annotated[list[str] | None, Form()] = None,
           min_similarity: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
           dedupe: Annotated[bool, Form(description=DEDUPE_HELP)] = False,
           box: Annotated[str | None, Form(max_length=200, description=BOX_HELP)] = None,
           boost: Annotated[RuleList, Form(description=BOOST_HELP)] = None,
           bury: Annotated[RuleList, Form(description=BURY_HELP)] = None,
           pin: Annotated[RuleList, Form(description=PIN_HELP)] = None,
           exclude: Annotated[RuleList, Form(description=EXCLUDE_HELP)] = None,
           diversity: Annotated[float | None, Form(ge=0.0, le=1.0, description=DIVERSITY_HELP)] = None,
           rules: Annotated[bool, Form(description=RULES_HELP)] = True,
           keyword_weight: Annotated[float | None, Form(ge=0.0, le=1000.0, description=KEYWORD_HELP)] = None
           ) -> Response:
    started = time.perf_counter()
    _check_form(request, "image", "text", "k", "where", "min_similarity", "dedupe", "box", "boost", "bury", "pin",
                "exclude", "diversity", "rules", "keyword_weight")
    ranking = _ranking(boost, bury, pin, exclude, diversity, keyword_weight)
    if image is None and (text is None or not text.strip()):
        raise HTTPException(422, body_problem(request.scope) or "send a photo (image), words (text), or both")
    if image is None and box is not None:
        raise HTTPException(422, "box: a region needs the photo it is part of; send it as image")
    _check_k(request, k)
    data = _read_upload(request, image) if image is not None else None
    where = where or []
    region: dict = {}
    if box is not None and data is not None:
        matches, resolved, size = svc.search_region(data, box, k, where, min_similarity, dedupe, text=text,
                                                    ranking=ranking, rules=rules)
        region = {"box": resolved.as_list(), "size": list(size)}
    else:
        matches = svc.search(data, k, where, min_similarity, dedupe, text=text, ranking=ranking, rules=rules)
    words = text if text and text.strip() else None
    kind = "+".join(([] if data is None else ["region" if region else "upload"]) + ([] if words is None else ["text"]))
    if kind == "text" and not svc.catalog.has_text:
        kind = "keywords"  # an image-only model: the words were searched as keywords alone
    query_id = svc.log_answer(kind, k, [m.id for m, _ in matches], where, words=words,
                              photo=hashlib.sha256(data).hexdigest() if data is not None else None,
                              box=region.get("box"))
    return _result(request, {"kind": kind, "id": None, "filename": image.filename if image is not None else None,
                             "text": words, **region}, k, where, min_similarity, matches, started, dedupe, query_id)


@router.post("/detect", response_model=DetectResult,
             summary="Shop the look: the items a detector finds in a photo, each with the catalog items most like it")
def detect(request: Request, svc: Service, image: Annotated[UploadFile, File(description="a shopper's photo")],
           words: Annotated[list[str] | None, Form(description=WORDS_HELP)] = None,
           label: Annotated[str | None, Form(max_length=200, description=LABEL_HELP)] = None,
           k: Annotated[int, Form(ge=1)] = 10, where: Annotated[list[str] | None, Form()] = None,
           min_similarity: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
           dedupe: Annotated[bool, Form(description=DEDUPE_HELP)] = False,
           min_score: Annotated[float, Form(ge=0.0, lt=1.0, description="keep items the detector scores above "
                                            "this")] = DEFAULT_THRESHOLD,
           max_boxes: Annotated[int, Form(ge=1, le=MAX_BOXES)] = DEFAULT_MAX_BOXES,
           boost: Annotated[RuleList, Form(description=BOOST_HELP)] = None,
           bury: Annotated[RuleList, Form(description=BURY_HELP)] = None,
           pin: Annotated[RuleList, Form(description=PIN_HELP)] = None,
           exclude: Annotated[RuleList, Form(description=EXCLUDE_HELP)] = None,
           diversity: Annotated[float | None, Form(ge=0.0, le=1.0, description=DIVERSITY_HELP)] = None,
           rules: Annotated[bool, Form(description=RULES_HELP)] = True) -> Response:
    started = time.perf_counter()
    _check_form(request, "image", "words", "label", "k", "where", "min_similarity", "dedupe", "min_score", "max_boxes",
                "boost", "bury", "pin", "exclude", "diversity", "rules")
    ranking = _ranking(boost, bury, pin, exclude, diversity)
    _check_k(request, k)
    words = [w for w in words or [] if w.strip()]
    if len(words) > MAX_WORDS or any(len(w) > MAX_WORD_CHARS for w in words):
        raise HTTPException(422, f"words: at most {MAX_WORDS} words of at most {MAX_WORD_CHARS} characters each")
    if not svc.can_detect:
        raise HTTPException(503, f"shop the look is not available on this server: its detector "
                                 f"{detector_name(svc.settings.detector)} is not installed (server setting "
                                 f"{env_name('detector')} picks another)")
    data = _read_upload(request, image)
    where = where or []
    look, results = svc.detect(data, words or None, label, k, where, min_similarity, dedupe, min_score, max_boxes,
                               ranking=ranking, rules=rules)
    groups = [{"label": region.label, "score": round(region.score or 0.0, 4), "box": region.box.as_list(),
               "results": _matches(request, found)} for region, found in zip(look.regions, results, strict=True)]
    return JSONResponse({"filename": image.filename, "size": list(look.size), "detector": look.detector,
                         "words": look.words, "words_from": look.words_from, "k": k, "where": parse_where(where),
                         "groups": groups, "took_ms": _ms(started)})


@router.get("/items", response_model=ItemPage, summary="Browse the catalog, with label facets")
def browse(request: Request, svc: Service, offset: Offset = 0, limit: Annotated[int, Query(ge=0, le=500)] = 50,
           where: WhereParam = None) -> ItemPage:
    total, items, facets, predicted = svc.browse(offset, limit, where or [])
    return ItemPage(total=total, offset=offset, limit=limit, where=parse_where(where or []),
                    items=[_item(request, it) for it in items], facets=facets, predicted_labels=predicted)


@router.get("/items/{item_id:path}/similar", response_model=SearchResult,
            summary="More like this: the items most like a catalog item (never itself or its exact copies)")
async def similar(request: Request, svc: Service, item_id: str, k: Annotated[int, Depends(k_param)],
                  where: WhereParam = None, min_similarity: MinSimilarity = None,
                  dedupe: Annotated[bool, Query(description=DEDUPE_HELP)] = False,
                  text: Annotated[str | None, Query(max_length=MAX_TEXT_CHARS, description=SIMILAR_TEXT_HELP)] = None,
                  boost: Annotated[RuleList, Query(description=BOOST_HELP)] = None,
                  bury: Annotated[RuleList, Query(description=BURY_HELP)] = None,
                  pin: Annotated[RuleList, Query(description=PIN_HELP)] = None,
                  exclude: Annotated[RuleList, Query(description=EXCLUDE_HELP)] = None,
                  diversity: Annotated[float | None, Query(ge=0.0, le=1.0, description=DIVERSITY_HELP)] = None,
                  rules: Annotated[bool, Query(description=RULES_HELP)] = True) -> Response:
    started = time.perf_counter()
    ranking = _ranking(boost, bury, pin, exclude, diversity)
    matches = await svc.similar(item_id, k, where or [], min_similarity, dedupe, text=text, ranking=ranking,
                                rules=rules)
    words = text if text and text.strip() else None
    kind = "item+text" if words else "item"
    query_id = svc.log_answer(kind, k, [m.id for m, _ in matches], where or [], item=item_id, words=words)
    return _result(request, {"kind": kind, "id": item_id, "filename": None, "text": words}, k, where or [],
                   min_similarity, matches, started, dedupe, query_id)


PhotoParam = Annotated[str | None, Query(max_length=400, description="one of the product's photo ids (a result's "
                                         "`photo`); default its first photo")]


@router.get("/items/{item_id:path}/image", summary="The original image file", response_class=FileResponse,
            responses={200: {"content": {"image/*": {}}}, 304: {"description": "not modified"}})
def image(request: Request, svc: Service, item_id: str, photo: PhotoParam = None) -> Response:
    item = svc.item(item_id, photo)
    path = svc.image_file(item.path)
    try:
        if isinstance(path, str):  # an object-store item: fetched and passed on
            data = storage.read_bytes(path)
            return _file(request, data, image_media_type(io.BytesIO(data)), item.sha256)
        media = image_media_type(path)
    except OSError as exc:
        raise HTTPException(404, f"the image file of item {shown(item_id)} is gone from the server; its catalog "
                                 "needs re-indexing") from exc
    return _file(request, path, media, item.sha256)


@router.get("/items/{item_id:path}/thumbnail", summary="A small JPEG of the item, made once and cached",
            response_class=FileResponse, responses={200: {"content": {"image/jpeg": {}}}})
def thumbnail(request: Request, svc: Service, item_id: str,
              size: Annotated[int, Query(ge=16, le=1024, description="longest side in pixels")] = DEFAULT_SIZE,
              photo: PhotoParam = None) -> Response:
    item = svc.item(item_id, photo)
    try:
        path = svc.thumbnail(item, size)
    except ImageError as exc:  # the original changed since indexing: say so without the server's paths
        if photo_gone(item.path):
            raise HTTPException(404, f"the image file of item {shown(item_id)} is gone from the server; its "
                                     "catalog needs re-indexing") from exc
        raise HTTPException(422, f"the image file of item {shown(item_id)} cannot be read any more (changed or "
                                 "damaged since indexing); its catalog needs re-indexing") from exc
    return _file(request, path, "image/jpeg", f"{item.sha256}-{path.parent.parent.name}")


@router.get("/items/{item_id:path}", response_model=Item, summary="One catalog item")
def item(request: Request, svc: Service, item_id: str) -> Item:
    return _item(request, svc.item(item_id))


# -- shoppers' events ----------------------------------------------------------------------------------


@router.post("/events", response_model=EventsStored,
             summary="Impressions, clicks and add-to-cart events of search results, in batches",
             description="A JSON body `{\"events\": [{\"query_id\", \"kind\", \"item\", \"position\"}, ...]}`: "
                         "`query_id` is the answer's, `kind` impression, click or cart. At most the server's "
                         "max_events per request. Events whose query_id this catalog has not logged are counted "
                         "(`unknown`) and not stored.")
async def add_events(request: Request, svc: Service) -> EventsStored:
    settings = request.app.state.settings
    body = await _read_body(request, settings.max_events_bytes)
    try:
        batch = EventBatch.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(_without_client_keys(exc.errors())) from None
    if len(batch.events) > settings.max_events:
        raise HTTPException(413, f"events: {len(batch.events)} in one request, over this server's limit of "
                                 f"{settings.max_events} (server setting {env_name('max_events')}); send them in "
                                 "several requests")
    now = time.time()
    records = [EventRecord(e.query_id, e.kind, e.item, now, e.position) for e in batch.events]
    stored, unknown = await run_in_threadpool(svc.add_events, records)
    return EventsStored(stored=stored, unknown=unknown)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    length = request.headers.get("content-length")
    too_large = HTTPException(413, f"the body is over this server's limit of {limit} bytes for events (server "
                                   f"setting {env_name('max_events_bytes')}); send fewer events per request")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _without_client_keys(errors: list) -> list[dict]:
    """Pydantic's errors with ``body`` first, as FastAPI's own; an unknown field's name (the client's text) is
    not repeated back, nor is any input."""
    out = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if error.get("type") == "extra_forbidden" and loc:
            loc[-1] = "(a field)"
        out.append({"loc": ["body", *loc], "msg": error.get("msg", "invalid value"), "type": error.get("type")})
    return out


# -- write endpoints (admin token) ----------------------------------------------------------------------


@router.post("/items", response_model=Item, status_code=201, dependencies=[Depends(require_admin)],
             summary="Add an image to the catalog (admin token)")
def add_item(request: Request, svc: Service, image: Annotated[UploadFile, File()],
             id: Annotated[str | None, Form(description="item id; default: from the content hash")] = None,
             labels: Annotated[str | None, Form(description='JSON object, e.g. {"articleType": "Shirts"}')] = None,
             ) -> Item:
    parsed = _parse_labels(labels)
    data = _read_upload(request, image)
    return _item(request, svc.add(data, id, parsed))


@router.delete("/items/{item_id:path}", response_model=Deleted, dependencies=[Depends(require_admin)],
               summary="Remove an item from the catalog (admin token)")
def delete_item(svc: Service, item_id: str) -> Deleted:
    svc.remove(item_id)
    return Deleted(id=item_id, deleted=True)


# -- the seed system's endpoint ----------------------------------------------------------------------


@router.post("/predict", response_model=Predicted,
             summary="Seed-compatible search: base64 images of the closest items and of the upload")
def predict(request: Request, svc: Service, image: Annotated[UploadFile, File()],
            k: Annotated[int, Form(ge=1)] = 10) -> Predicted:
    _check_k(request, k)
    closest, uploaded = svc.predict(_read_upload(request, image), k)
    return Predicted(closest_images=closest, uploaded_image=uploaded)


# -- helpers ------------------------------------------------------------------------------------------


def _read_upload(request: Request, upload: UploadFile) -> bytes:
    limit = request.app.state.settings.max_upload_bytes
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, too_large_message(limit))
    return data


def _parse_labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"labels must be a JSON object of strings ({exc.msg})") from exc
    if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
        raise HTTPException(422, 'labels must be a JSON object of strings, e.g. {"articleType": "Shirts"}')
    return {str(k): str(v) for k, v in value.items()}


def _urls(request: Request, item_id: str, sha256: str | None, photo: str | None = None) -> tuple[str, str]:
    base = f"{request.scope.get('root_path', '')}/api/items/{quote(item_id, safe='')}"
    version = f"v={sha256[:12]}" if sha256 else ""
    if photo is not None and photo != item_id:  # the product's photo that matched, not its first
        version += f"&photo={quote(photo, safe='')}"
    return f"{base}/image?{version}", f"{base}/thumbnail?{version}"


def _item(request: Request, item: CatalogItem) -> Item:
    image_url, thumbnail_url = _urls(request, item.id, item.sha256)
    return Item(id=item.id, labels=item.labels, predicted=item.predicted, image_url=image_url,
                thumbnail_url=thumbnail_url)


def _result(request: Request, query: dict, k: int, where: list[str], min_similarity: float | None,
            matches: list[tuple[Match, str | None]], started: float, dedupe: bool, query_id: str) -> JSONResponse:
    """A SearchResult built as plain JSON: the shape is fixed here and documented by the response model, so
    revalidating it on every request (a third of a /similar request's time) buys nothing."""
    return JSONResponse({"query": query, "k": k, "where": parse_where(where), "min_similarity": min_similarity,
                         "dedupe": dedupe, "results": _matches(request, matches), "took_ms": _ms(started),
                         "query_id": query_id})


def _matches(request: Request, matches: list[tuple[Match, str | None]]) -> list[dict]:
    results = []
    for match, sha256 in matches:
        image_url, thumbnail_url = _urls(request, match.id, sha256, match.photo or None)
        results.append({"id": match.id, "labels": match.labels, "predicted": match.predicted, "image_url": image_url,
                        "thumbnail_url": thumbnail_url, "rank": match.rank, "similarity": match.similarity,
                        "distance": match.distance, "missing": match.missing, "photo": match.photo,
                        "photos": match.photos, "variants": match.variants, "rules": match.rules,
                        "found_by": match.found_by})
    return results


MAX_RULES = 50  # rules of each kind in one request
MAX_RULE_CHARS = 200


def _ranking(boost: RuleList, bury: RuleList, pin: RuleList, exclude: RuleList, diversity: float | None,
             keyword_weight: float | None = None) -> Ranking | None:
    """A request's rules, bounded in number and size (422 otherwise); None when it gives none."""
    for name, values in (("boost", boost), ("bury", bury), ("pin", pin), ("exclude", exclude)):
        if values and (len(values) > MAX_RULES or any(len(v) > MAX_RULE_CHARS for v in values)):
            raise HTTPException(422, f"{name}: at most {MAX_RULES} rules of at most {MAX_RULE_CHARS} characters")
    if not (boost or bury or pin or exclude) and diversity is None and keyword_weight is None:
        return None
    return Ranking.parse(boost, bury, exclude, pin, diversity, keyword_weight)


def _file(request: Request, path, media_type: str, etag: str | None) -> Response:
    tag = f'"{etag}"' if etag else None
    if tag and request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers={"ETag": tag, "Cache-Control": CACHE_IMMUTABLE})
    headers = {"Cache-Control": CACHE_IMMUTABLE}
    if tag:
        headers["ETag"] = tag
    if isinstance(path, bytes):
        return Response(content=path, media_type=media_type, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


def shown(value: str, limit: int = 60) -> str:
    """A client's value as an error message may quote it: repr'd, and cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...'"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
