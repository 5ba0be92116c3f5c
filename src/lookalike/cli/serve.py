"""``lookalike serve``: the REST API and web page (FastAPI and uvicorn are imported when it runs)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..core.config import DEFAULT_MAX_PIXELS
from .common import Parents, int_at_least, positive_int

if TYPE_CHECKING:
    from rich.console import Console


def cmd_serve(args: argparse.Namespace, out: Console) -> int:
    import socket

    import uvicorn
    from pydantic import ValidationError

    from ..api import ServeSettings, create_app
    from ..api.service import CatalogService
    from ..core.errors import LookalikeError

    overrides: dict = {"catalog": args.catalog}
    for name in ("device", "runtime", "precision", "detector"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.admin_token is not None:
        overrides["admin_token"] = args.admin_token
    if args.max_upload_mb is not None:
        overrides["max_upload_bytes"] = int(args.max_upload_mb * 1024 * 1024)
    if args.max_pixels is not None:
        overrides["max_pixels"] = args.max_pixels
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise LookalikeError(f"bad server setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    with socket.socket() as probe:  # say so now, rather than after loading the model
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise LookalikeError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                                 "choose another --port") from None
    service = CatalogService(settings)
    app = create_app(settings, service=service)
    where = f"http://{args.host}:{args.port}/"
    print(f"serving {service.catalog.name} ({service.size()} items, {service.encoder.describe()}) at {where}  "
          f"API docs: {where}docs"
          + ("" if settings.admin_token else "  (read-only: no --admin-token)"), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                access_log=args.verbose)
    return 0


def add_parsers(sub, parents: Parents) -> None:
    """Add ``serve`` to the ``lookalike`` parser."""
    common, catalog_arg = parents.common, parents.catalog
    p = sub.add_parser("serve", parents=[common, catalog_arg], help="REST API and web page for a catalog",
                       description="Serve a catalog: a web page at / and a REST API under /api (docs at /docs). "
                       "Settings may also come from LOOKALIKE_* environment variables, e.g. "
                       "LOOKALIKE_ADMIN_TOKEN.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int_at_least(0), default=8000, help="port (default 8000)")
    p.add_argument("--admin-token", default=None, help="allow POST/DELETE /api/items for requests carrying this "
                   "token (prefer LOOKALIKE_ADMIN_TOKEN: a command line is visible to other users)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest accepted upload (default 20)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--runtime", default=None, choices=["auto", "torch", "openvino"],
                   help="what runs the model for uploads: auto (default; OpenVINO on x86 CPUs with native bf16), "
                        "torch, openvino; or LOOKALIKE_RUNTIME")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="auto (default: int8 when the catalog's int8 model passed its gate, else bf16 or fp32); "
                        "or LOOKALIKE_PRECISION")
    p.add_argument("--detector", default=None, metavar="NAME",
                   help="the detector of shop the look (POST /api/detect): a hub repo or a save_pretrained folder "
                        "(default google/owlv2-base-patch16-ensemble); or LOOKALIKE_DETECTOR")
    p.set_defaults(func=cmd_serve)
