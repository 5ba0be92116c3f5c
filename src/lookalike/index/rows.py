"""Vectors by row, on disk: the re-ranking source of IVF-PQ, and ``vector(key)`` for every index kind.

Rows are only ever appended; a row is never rewritten in place, so a reader that mapped the first n rows
keeps reading valid data while a writer appends. A writer killed mid-append leaves extra bytes after the
last saved row; the next save writes over them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class RowVectors:
    """A memory-mapped file of the first ``saved`` rows plus rows appended in memory since."""

    def __init__(self, dim: int, dtype: str, base: np.ndarray | None = None):
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self._base = base if base is not None else np.empty((0, dim), self.dtype)
        self._tail: list[np.ndarray] = []
        self._tail_rows = 0
        self._joined: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self._base) + self._tail_rows

    @property
    def itemsize(self) -> int:
        return self.dim * self.dtype.itemsize

    def append(self, vectors: np.ndarray) -> None:
        if len(vectors):
            self._tail.append(np.ascontiguousarray(vectors, dtype=self.dtype))
            self._tail_rows += len(vectors)
            self._joined = None

    def get(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of ``rows`` (any shape of row numbers; result has one more axis)."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.ravel()
        nb = len(self._base)
        if len(flat) > 1 and flat[-1] - flat[0] == len(flat) - 1 and (np.diff(flat) == 1).all():
            return self._span(int(flat[0]), int(flat[-1]) + 1).reshape(*rows.shape, self.dim)
        if not self._tail_rows or (len(flat) and flat.max() < nb):
            out = self._base[np.clip(flat, 0, max(nb - 1, 0))] if nb else np.zeros((len(flat), self.dim))
        else:
            tail = self._tail_matrix()
            out = np.empty((len(flat), self.dim), self.dtype)
            low = flat < nb
            out[low] = self._base[flat[low]]
            out[~low] = tail[flat[~low] - nb]
        return np.asarray(out, dtype=np.float32).reshape(*rows.shape, self.dim)

    def _span(self, start: int, stop: int) -> np.ndarray:
        """Consecutive rows as a view where they lie in one part (no copy of a float32 memory map)."""
        nb = len(self._base)
        if stop <= nb:
            part = self._base[start:stop]
        elif start >= nb:
            part = self._tail_matrix()[start - nb:stop - nb]
        else:
            part = np.concatenate([self._base[start:], self._tail_matrix()[:stop - nb]])
        return np.asarray(part, dtype=np.float32)

    def _tail_matrix(self) -> np.ndarray:
        if self._joined is None:
            self._joined = np.concatenate(self._tail) if self._tail else np.empty((0, self.dim), self.dtype)
            self._tail = [self._joined]
        return self._joined

    def save(self, path: Path) -> None:
        """Append the in-memory rows to ``path`` (which holds the base rows), then map the whole file."""
        nb = len(self._base)
        mapped_here = isinstance(self._base, np.memmap) and Path(self._base.filename) == path.resolve()
        # Append in place only where this process wrote the file's end: another process (a second replica on
        # this machine) may have appended rows it has mapped, which must never be written over. Otherwise a
        # new file replaces the name, and maps of the old one stay valid.
        if mapped_here and _size(path) != nb * self.itemsize:
            mapped_here = False
        if not mapped_here:
            tmp = path.with_suffix(path.suffix + ".tmp")
            with open(tmp, "wb") as fh:
                if len(self._base):
                    fh.write(np.ascontiguousarray(self._base))  # a contiguous array is written as its buffer
                self._write_tail(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        elif self._tail_rows:
            with open(path, "r+b") as fh:
                fh.seek(nb * self.itemsize)
                self._write_tail(fh)
                fh.truncate()
                fh.flush()
                os.fsync(fh.fileno())
        total = self.rows
        self._base = self.open_base(path, self.dim, self.dtype.name, total)
        self._tail, self._tail_rows, self._joined = [], 0, None

    def _write_tail(self, fh) -> None:
        """The rows appended in memory, piece by piece as they came (not joined into one copy first)."""
        for piece in self._tail:
            if len(piece):
                fh.write(piece)

    @staticmethod
    def open_base(path: Path, dim: int, dtype: str, rows: int) -> np.ndarray:
        if rows == 0:
            return np.empty((0, dim), np.dtype(dtype))
        return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=(rows, dim))

    @classmethod
    def load(cls, path: Path, dim: int, dtype: str, rows: int) -> RowVectors:
        if rows and path.stat().st_size < rows * dim * np.dtype(dtype).itemsize:
            raise ValueError(f"{path} holds fewer than {rows} rows")
        return cls(dim, dtype, cls.open_base(path, dim, dtype, rows))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1
