"""Seeded clustered unit vectors shaped like CNN embeddings, for the scale benchmark and the index tests.

Uniform noise in 2048 dimensions has no near neighbours worth finding (every point is almost equally far
from every other), so recall measured on it says nothing about a catalog. Real embeddings sit in clusters
(product types) and vary inside a cluster along a few directions; this generator draws that shape: a unit
centre per cluster, a low-rank spread shared by all clusters, and a little isotropic noise.
"""

from __future__ import annotations

import numpy as np


def clustered_vectors(n: int, dim: int, clusters: int | None = None, seed: int = 0, rank: int = 64,
                      spread: float = 0.5, noise: float = 0.15, chunk: int = 65_536) -> np.ndarray:
    """``n`` x ``dim`` float32 unit vectors in ``clusters`` clusters (default about n/100, at least 2)."""
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for block, _ in clustered_chunks(n, dim, clusters, seed, rank, spread, noise, chunk):
        out[start:start + len(block)] = block
        start += len(block)
    return out


def clustered_chunks(n: int, dim: int, clusters: int | None = None, seed: int = 0, rank: int = 64,
                     spread: float = 0.5, noise: float = 0.15, chunk: int = 65_536):
    """The same vectors as ``clustered_vectors``, as (block, cluster of each row) of at most ``chunk`` rows:
    a million 2048-d vectors without holding them all."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(2, n // 100)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rank = min(rank, dim)
    # A decaying spectrum (as in real embeddings' PCA): the first directions carry most of the spread.
    scales = (1.0 / np.sqrt(np.arange(1, rank + 1, dtype=np.float32)))
    scales /= np.linalg.norm(scales)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) * (scales[:, None] / np.sqrt(np.float32(dim)))
    for start in range(0, n, chunk):
        rows = min(n, start + chunk) - start
        which = rng.integers(0, clusters, rows)
        x = centres[which]
        x += spread * np.sqrt(np.float32(dim)) * (rng.standard_normal((rows, rank), dtype=np.float32) @ basis)
        x += (noise / np.sqrt(np.float32(dim))) * rng.standard_normal((rows, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x, which
