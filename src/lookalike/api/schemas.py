"""The typed shapes of every API answer; FastAPI turns them into the OpenAPI document at /docs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Item(BaseModel):
    id: str
    labels: dict[str, str] = Field(description="label columns of the catalog's manifest, if any, and labels "
                                   "predicted by `lookalike tag` (named in `predicted`)")
    predicted: dict[str, float] = Field(default_factory=dict, description="which labels were predicted from "
                                        "words by a text+image model (zero-shot), with the model's probability")
    image_url: str = Field(description="the original image")
    thumbnail_url: str = Field(description="a small JPEG; add ?size=N for another size")


class MatchItem(Item):
    rank: int
    similarity: float = Field(description="cosine similarity, 1 = same direction")
    distance: float = Field(description="euclidean distance between the unit vectors, sqrt(2 - 2 similarity)")
    missing: bool = Field(False, description="the item's photo is gone from the server (deleted or moved since "
                          "indexing): its image and thumbnail answer 404 until it is re-indexed or pruned")
    photo: str = Field("", description="the product's photo that matched best (its image_url shows it)")
    photos: int = Field(1, description="how many photos the product has")
    variants: list[str] = Field(default_factory=list, description="with a filter: the product's variants (rows) "
                                "that match it")
    rules: list[str] = Field(default_factory=list, description="the ranking rules that moved it, e.g. "
                             "'boost brand=Acme +0.1', 'bury stock=out', 'pin', 'diversity 0.7'")
    found_by: list[str] = Field(default_factory=list, description="for words: the result lists that found it, "
                                "'vector' and/or 'keyword' (fused by reciprocal rank fusion)")


class Rules(BaseModel):
    """A catalog's default ranking rules (``lookalike rules show``), applied to every search unless rules=false."""

    boost: list[str] = Field(default_factory=list, description="label=value:weight, e.g. 'brand=Acme:0.1'")
    bury: list[str] = Field(default_factory=list, description="label=value; such items go last")
    exclude: list[str] = Field(default_factory=list, description="label=value; such items are left out")
    pin: list[str] = Field(default_factory=list, description="product ids shown first, in this order")
    diversity: float | None = Field(None, description="MMR lambda: 1 = similarity only, 0 = most varied")


class Query(BaseModel):
    kind: str = Field(description="'upload', 'region', 'text', 'keywords' (words on an image-only model: a keyword "
                      "search), 'upload+text', 'region+text', 'item' or 'item+text'")
    id: str | None = Field(default=None, description="the catalog item searched from (kind 'item')")
    filename: str | None = None
    text: str | None = Field(default=None, description="the words searched for, if any")
    box: list[int] | None = Field(default=None, description="the region searched, [x0, y0, x1, y1] in pixels of "
                                  "the upright photo (a `box` was sent)")
    size: list[int] | None = Field(default=None, description="the uploaded photo's upright [width, height], when "
                                   "a region was searched")


class SearchResult(BaseModel):
    query: Query
    k: int
    where: dict[str, str]
    min_similarity: float | None
    dedupe: bool = Field(False, description="one item per near-duplicate group")
    results: list[MatchItem]
    took_ms: float = Field(description="time spent answering, from request to response")
    query_id: str = Field(description="this answer's id (random): send it back with the impressions, clicks and "
                          "add-to-cart events of its results (POST /api/events)")


class Group(BaseModel):
    label: str = Field(description="the word the detector matched this item with")
    score: float = Field(description="the detector's score, in [0, 1]")
    box: list[int] = Field(description="[x0, y0, x1, y1] in pixels of the upright photo")
    results: list[MatchItem] = Field(description="the catalog items most like this region, best first")


class DetectResult(BaseModel):
    filename: str | None = None
    size: list[int] = Field(description="the photo's upright [width, height]: what the boxes' pixels refer to")
    detector: str = Field(description="the zero-shot detector that found the items")
    words: list[str] = Field(description="the words it looked for")
    words_from: str | None = Field(default=None, description="the catalog label the words are the values of, when "
                                   "none were sent")
    k: int
    where: dict[str, str]
    groups: list[Group] = Field(description="one per item found, best score first")
    took_ms: float


class ItemPage(BaseModel):
    total: int = Field(description="items matching the filter")
    offset: int
    limit: int
    where: dict[str, str]
    items: list[Item]
    facets: dict[str, dict[str, int]] = Field(
        description="label -> value -> items among the filtered ones; labels with many values are left out")
    predicted_labels: list[str] = Field(default_factory=list,
                                        description="labels predicted by `lookalike tag` (zero-shot), not the source's")


class Health(BaseModel):
    status: str
    version: str
    items: int
    model: str
    device: str
    runtime: str = Field(description="what runs the model: torch, openvino, or numpy for model-free embedders")
    precision: str
    writable: bool = Field(description="whether POST/DELETE /api/items are enabled (an admin token is set)")
    text: bool = Field(False, description="whether the model understands words (search and similar take `text`)")
    detect: bool = Field(False, description="whether POST /api/detect (shop the look) can run: its detector's "
                         "weights are on the server")


class Predicted(BaseModel):
    """The seed system's answer shape, kept for its existing clients."""

    closest_images: list[str] = Field(description="base64 JPEG of the closest catalog images, best first")
    uploaded_image: str = Field(description="base64 JPEG of the uploaded image")


class Deleted(BaseModel):
    id: str
    deleted: bool


QUERY_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"


class Event(BaseModel):
    """One thing a shopper did with a result of an answer."""

    model_config = ConfigDict(extra="forbid")

    query_id: str = Field(pattern=QUERY_ID_PATTERN, description="the `query_id` of the answer the result was in")
    kind: Literal["impression", "click", "cart"] = Field(description="shown, clicked, or added to the cart")
    item: str = Field(min_length=1, max_length=400, description="the result's product id")
    position: int | None = Field(default=None, ge=0, le=10_000, description="its 0-based place in the answer")


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, description="at most the server's max_events per request")


class EventsStored(BaseModel):
    stored: int = Field(description="events stored")
    unknown: int = Field(description="events whose query_id this catalog has not logged: counted, not stored")
