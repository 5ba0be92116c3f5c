"""Server settings: from `lookalike serve` options, or from LOOKALIKE_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..core.config import DEFAULT_MAX_PIXELS

MB = 1024 * 1024


class ServeSettings(BaseSettings):
    """Everything `create_app` needs. Each field can be set as ``LOOKALIKE_<NAME>`` (e.g.
    ``LOOKALIKE_ADMIN_TOKEN``), so a token never has to appear on a command line."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", frozen=True)

    catalog: str | Path = Field(description="the catalog to serve: a folder or a postgresql:// URL")
    admin_token: SecretStr | None = Field(default=None, description="required by POST/DELETE /api/items")
    max_upload_bytes: int = Field(default=20 * MB, gt=0, description="largest accepted upload")
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0, description="largest accepted image (w x h)")
    max_k: int = Field(default=100, gt=0, description="most results one request may ask for")
    device: str = Field(default="auto", description="auto | cpu | cuda | mps")
    runtime: str = Field(default="auto", description="auto | torch | openvino: what runs the model for uploads "
                         "(auto: OpenVINO on x86 CPUs with native bf16)")
    precision: str = Field(default="auto", description="auto | fp32 | bf16 | fp16 | int8 (auto: int8 when the "
                           "catalog's own int8 model passed its gate)")
    max_batch: int = Field(default=16, gt=0, description="uploads embedded together in one model call")
    cors_origins: str = Field(default="", description="comma-separated origins whose pages may call the API from "
                              "a browser (CORS), e.g. https://shop.example; default none")
    body_timeout: float = Field(default=30.0, gt=0, description="seconds a request body may pause before the "
                                "connection is answered 408 and closed")
    detector: str | None = Field(default=None, description="the zero-shot detector of POST /api/detect (shop the "
                                 "look): a hub repo or a save_pretrained folder; default "
                                 "google/owlv2-base-patch16-ensemble")
    log_queries: bool = Field(default=True, description="log every search answer (what was asked, the product "
                              "ids answered) in the catalog's store under its query_id, for `lookalike evaluate "
                              "--events`; POST /api/events needs it")
    max_events: int = Field(default=500, gt=0, description="most events one POST /api/events may carry")
    max_events_bytes: int = Field(default=256 * 1024, gt=0, description="largest POST /api/events body")
    thumbnail_cache: Path | None = Field(default=None, description="default: <catalog>/thumbnails, or for a "
                                         "database catalog thumbnails/ in this process's cache folder")


def cors_origins(settings: ServeSettings) -> list[str]:
    """The allowed origins of ``LOOKALIKE_CORS_ORIGINS``, without spaces, empty entries or trailing slashes."""
    return [origin.strip().rstrip("/") for origin in settings.cors_origins.split(",") if origin.strip()]


def env_name(field: str) -> str:
    """The environment variable that sets a server setting, e.g. ``LOOKALIKE_MAX_PIXELS``: what error
    messages name, since an API client's operator may never have typed a `lookalike serve` option."""
    if field not in ServeSettings.model_fields:
        raise KeyError(f"no server setting {field!r}")
    return f"{ServeSettings.model_config['env_prefix']}{field}".upper()
