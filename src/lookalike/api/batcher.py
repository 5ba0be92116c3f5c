"""Embed concurrent uploads together: one model call for whatever requests are waiting.

Request threads decode their own image in parallel (Pillow releases the GIL); only the model call is
shared. A batch takes what is queued when the model becomes free, so a lone request never waits for
company, and under load the model runs full batches.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np
import torch

from ..embed import Encoder


class EmbedBatcher:
    def __init__(self, encoder: Encoder, max_batch: int = 16):
        self.encoder = encoder
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lookalike-embed", daemon=True)
        self._thread.start()

    def embed(self, array: np.ndarray, timeout: float = 120.0) -> np.ndarray:
        """One prepared H x W x 3 uint8 image -> its unit vector."""
        future: Future = Future()
        self._queue.put((array, future))
        return future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._embed(batch)
            if stop:
                return

    def _embed(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            vectors = self.encoder.embed_uint8(torch.from_numpy(np.stack([a for a, _ in batch])))
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            future.set_result(vector)
