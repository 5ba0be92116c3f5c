"""Files from the Hugging Face hub for network models: the cache first (``HF_HOME``, ``HF_HUB_OFFLINE``),
then a download, failing in seconds with one line that says how to fix it. Imports no PyTorch."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from ..core.errors import ModelUnavailableError

# Models that work with no network and no hub cache, for every "cannot load" message.
OFFLINE_MODELS = "--model mobilenetv2 (built in: ImageNet MobileNetV2), timm:local-dir:PATH (a timm model folder)"


def offline_models() -> str:
    return f"Works offline: {OFFLINE_MODELS}"


def fixes(what: str = "weights") -> str:
    """The ways to get hub files onto a machine, for the end of a one-line error."""
    home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    local = "; or pass --weights PATH to a local .safetensors/.pth file" if what == "weights" else ""
    return (f"Fixes: run once with internet access so the {what} are cached under HF_HOME={home}; "
            f"or copy that cache here{local}; or use a model that works offline: {OFFLINE_MODELS}")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_file(repo: str, filenames: Sequence[str]) -> str | None:
    """The cached path of the first of ``filenames`` in hub repo ``repo``, or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def probe(name: str, what: str, host: str, port: int = 443) -> None:
    """Fail in seconds, not minutes of retries, when ``host`` cannot be reached and nothing is cached.

    Raises:
        ModelUnavailableError: the host is unreachable.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # behind a proxy a direct probe says nothing; let the hub client try
    timeout = float(os.environ.get("LOOKALIKE_HUB_TIMEOUT", "1.5"))
    error = _connect_within(host, port, timeout)
    if error is not None:
        raise ModelUnavailableError(
            f"cannot load weights for {name} ({what}): {host} is unreachable ({error}) and "
            f"the weights are not cached. {fixes()}"
        )


def _connect_within(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection to ``host`` opens within ``timeout`` seconds, else why not. The name lookup
    runs in a daemon thread too: ``getaddrinfo`` ignores socket timeouts and can hang for 20 s offline."""
    import threading

    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc.strerror or exc))

    thread = threading.Thread(target=connect, daemon=True, name="lookalike-hub-probe")
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s; LOOKALIKE_HUB_TIMEOUT sets the wait"


def probe_hub(name: str, what: str) -> None:
    """``probe`` the hub's endpoint (``HF_ENDPOINT``)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    probe(name, what, url.hostname or "huggingface.co", url.port or 443)


def require_cached_or_reachable(name: str, what: str, repo: str) -> None:
    """Fail in about a second, before PyTorch is imported, when hub weights are neither cached nor reachable.

    Raises:
        ModelUnavailableError: offline (``HF_HUB_OFFLINE``) and not cached, or the hub unreachable.
    """
    if cached_file(repo, ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")):
        return
    if hub_offline():
        raise ModelUnavailableError(
            f"cannot load weights for {name} ({what}): HF_HUB_OFFLINE is set and {repo} is not in the cache. "
            f"{fixes()}"
        )
    probe_hub(name, what)


def hub_file(name: str, repo: str, filenames: Sequence[str], what: str = "weights") -> str:
    """The local path of the first of ``filenames`` that hub repo ``repo`` holds: from the cache, else
    downloaded into it.

    Raises:
        ModelUnavailableError: offline and not cached, the hub unreachable, or the repo has none of them.
    """
    path = cached_file(repo, filenames)
    if path is not None:
        return path
    if hub_offline():
        raise ModelUnavailableError(
            f"cannot load {what} for {name}: HF_HUB_OFFLINE is set and {repo} ({' or '.join(filenames)}) is not "
            f"in the cache. {fixes(what)}"
        )
    probe_hub(name, repo)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename in filenames:
        try:
            return hf_hub_download(repo, filename)
        except EntryNotFoundError:
            continue
        except Exception as exc:  # noqa: BLE001 - network, authentication, missing repo: one line
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailableError(f"cannot load {what} for {name} from {repo}: {reason}. {fixes(what)}") \
                from exc
    raise ModelUnavailableError(f"cannot load {what} for {name}: {repo} holds none of {', '.join(filenames)}")


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's sha256: what a catalog records as ``file:<digest>`` weights."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
