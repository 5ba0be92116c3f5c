"""Embed concurrent uploads together: one model call for whatever requests are waiting.

A batch takes what is queued when the model becomes free, so a lone request never waits for company, and
under load the model runs full batches. The batch's images are decoded first, in parallel threads (Pillow
releases the GIL), then embedded: decoding never runs beside the model, whose two-thread OpenMP team
loses far more than a decode costs when one of its threads is preempted (measured: 19 ms against 12 ms
an image on 2 cores). A bad image fails its own request only.

Under steady load the clients served by one batch send their next request a few milliseconds after it
returns; a batch that started at once would take only the first of them and leave the rest to wait a
whole model call. So while a batch holds fewer requests than the previous one, it lingers for the others,
for at most a small share of the previous model call (``LINGER_SHARE``, capped at ``LINGER_MAX_S``). A
lone client never waits: its previous batch held one request.

The model lives on this one thread, from creation to every call: PyTorch's OpenMP runtime slows down by
about half on a small machine as soon as a second long-lived thread has run parallel work (its idle
workers stop spinning and must be woken for each of the ~100 parallel regions of a forward pass).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..engines.embed import Encoder

LINGER_SHARE = 0.25  # of the previous model call's time
LINGER_MAX_S = 0.008


class TextJob:
    """Words to embed with the text tower, queued beside photos so the model stays on its one thread."""

    def __init__(self, texts: list[str]):
        self.texts = texts


class EmbedBatcher:
    def __init__(self, make_encoder: Callable[[], Encoder], max_batch: int = 16, decoders: int | None = None):
        """Builds the encoder on the batcher's thread; its errors (a model that cannot be loaded) are raised
        here."""
        self.max_batch = max_batch
        self._decoders = ThreadPoolExecutor(decoders or os.cpu_count() or 1, thread_name_prefix="lookalike-decode")
        self._queue: queue.Queue[tuple[bytes | np.ndarray | TextJob, Future] | None] = queue.Queue()
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(make_encoder, ready), name="lookalike-embed",
                                        daemon=True)
        self._thread.start()
        self.encoder: Encoder = ready.result()

    def embed(self, image: bytes | np.ndarray, timeout: float = 120.0) -> np.ndarray:
        """Image file bytes, or an image already prepared as H x W x 3 uint8 -> its unit vector.

        Raises:
            ImageError: the bytes are not a readable image.
        """
        future: Future = Future()
        self._queue.put((image, future))
        return future.result(timeout=timeout)

    def embed_text(self, texts: list[str], timeout: float = 120.0) -> np.ndarray:
        """Words -> N x D unit vectors from the model's text tower, on the model's thread.

        Raises:
            NoTextModelError: the model embeds photos only.
            ModelUnavailableError: its tokenizer cannot be loaded.
        """
        future: Future = Future()
        self._queue.put((TextJob(list(texts)), future))
        return future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._decoders.shutdown()

    def _run(self, make_encoder: Callable[[], Encoder], ready: Future) -> None:
        try:
            encoder = make_encoder()
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor
            ready.set_exception(exc)
            return
        ready.set_result(encoder)
        last_size, last_seconds = 1, 0.0
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            deadline = time.perf_counter() + min(LINGER_MAX_S, LINGER_SHARE * last_seconds)
            while len(batch) < self.max_batch:
                wait = deadline - time.perf_counter() if len(batch) < last_size else 0.0
                try:
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            started = time.perf_counter()
            self._embed(encoder, batch)
            last_size, last_seconds = len(batch), time.perf_counter() - started
            if stop:
                return

    def _embed(self, encoder: Encoder, batch: list[tuple[bytes | np.ndarray | TextJob, Future]]) -> None:
        texts = [(job, future) for job, future in batch if isinstance(job, TextJob)]
        if texts:
            self._embed_texts(encoder, texts)
            batch = [(job, future) for job, future in batch if not isinstance(job, TextJob)]
            if not batch:
                return

        def prepare(image: bytes | np.ndarray) -> np.ndarray | BaseException:
            try:
                return image if isinstance(image, np.ndarray) else encoder.prepare(image)
            except Exception as exc:  # noqa: BLE001 - fails its own request only
                return exc

        prepared = list(self._decoders.map(prepare, [image for image, _ in batch]))
        good = [(array, future) for array, (_, future) in zip(prepared, batch, strict=True)
                if isinstance(array, np.ndarray)]
        for array, (_, future) in zip(prepared, batch, strict=True):
            if not isinstance(array, np.ndarray):
                future.set_exception(array)
        if not good:
            return
        try:
            vectors = encoder.embed_uint8(np.stack([a for a, _ in good]))
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in good:
                future.set_exception(exc)
            return
        for (_, future), vector in zip(good, vectors, strict=True):
            future.set_result(vector)

    @staticmethod
    def _embed_texts(encoder: Encoder, jobs: list[tuple[TextJob, Future]]) -> None:
        """Every waiting request's words in one text-tower call."""
        try:
            vectors = encoder.encode_text([t for job, _ in jobs for t in job.texts])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in jobs:
                future.set_exception(exc)
            return
        start = 0
        for job, future in jobs:
            future.set_result(vectors[start:start + len(job.texts)])
            start += len(job.texts)
