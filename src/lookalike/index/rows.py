"""Vectors by row, on disk: the re-ranking source of IVF-PQ, and ``vector(key)`` for every index kind.

Rows are only ever appended; a row is never rewritten in place, so a reader that mapped the first n rows
keeps reading valid data while a writer appends. A writer killed mid-append leaves extra bytes after the
last saved row; the next save writes over them.

A writer committing batch after batch may ``spill`` the rows appended so far to the file before it saves: the
same bytes, written while its next transaction is in flight rather than all at the end. Spilled rows count for
nothing until ``save`` (the stamp, written after it, is the commit point), so a kill between the two loses
nothing saved.
"""

from __future__ import annotations

import os
import secrets
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
        self._spill: _Spill | None = None

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
        if self._joined is None:  # one piece (rows read back from their spill file) is used as it is, not copied
            self._joined = (self._tail[0] if len(self._tail) == 1 else np.concatenate(self._tail) if self._tail
                            else np.empty((0, self.dim), self.dtype))
            self._tail = [self._joined]
        return self._joined

    def spill(self, path: Path) -> None:
        """Write the rows appended since the last spill to ``path`` ahead of ``save``, without syncing or mapping
        them: appended after the base rows where this process wrote the file's end, or into a file of its own
        (``path.<pid>-<token>.spill``) while it has no base rows; otherwise nothing is written until ``save``.
        The caller holds the folder's lock."""
        nb = len(self._base)
        if self._spill is None:
            if nb == 0:
                _remove_stale_spills(path)
                target = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.spill")
                fh = open(target, "wb")  # noqa: SIM115 - closed by save
            elif self._appends_in_place(path):
                target = path
                fh = open(path, "r+b")  # noqa: SIM115 - closed by save
                fh.seek(nb * self.itemsize)
            else:
                return
            self._spill = _Spill(path, target, fh)
        elif not self._spill.valid(path, nb, self.itemsize):
            self._drop_spill()
            return
        self._write_tail(self._spill.fh, skip=self._spill.rows)
        self._spill.fh.flush()  # handed to the kernel now, not when the save comes
        self._spill.rows = self._tail_rows
        self._release_spilled()

    def _release_spilled(self) -> None:
        """Read the spilled rows back from the file they were written to (a memory map: the kernel's page cache,
        which it may evict) instead of holding them in memory: a run's rows cost its writer no memory once
        spilled, and an index built in chunks holds one chunk (``VectorIndex.build_streamed``)."""
        spill = self._spill
        if spill is None or not spill.rows:
            return
        offset = len(self._base) * self.itemsize if spill.target == spill.path else 0
        view = np.memmap(spill.target, dtype=self.dtype, mode="r", offset=offset, shape=(spill.rows, self.dim))
        self._tail, self._joined = [view], None

    def _appends_in_place(self, path: Path) -> bool:
        """Is ``path`` the mapped base, ending where the base ends (no other process appended since)?"""
        mapped_here = isinstance(self._base, np.memmap) and Path(self._base.filename) == path.resolve()
        return mapped_here and _size(path) == len(self._base) * self.itemsize

    def discard_spill(self) -> None:
        """Forget the rows spilled since the last save (a run that failed before saving): a spill file of this
        process's own is deleted; rows spilled in place stay unsaved bytes after the saved ones."""
        self._drop_spill()

    def _drop_spill(self) -> None:
        spill, self._spill = self._spill, None
        if spill is not None:
            spill.fh.close()
            if spill.target != spill.path:
                spill.target.unlink(missing_ok=True)

    def _finish_spill(self, path: Path) -> bool:
        """Write what is left after the spilled rows, sync and put the file in place; False (spill dropped)
        where the spill no longer holds: another path, or another process wrote the file since."""
        spill = self._spill
        if spill is None or not spill.valid(path, len(self._base), self.itemsize):
            self._drop_spill()
            return False
        fh = spill.fh
        self._write_tail(fh, skip=spill.rows)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._spill = None
        if spill.target != path:
            os.replace(spill.target, path)
        return True

    def save(self, path: Path) -> None:
        """Append the in-memory rows to ``path`` (which holds the base rows), then map the whole file."""
        if self._spill is not None and self._finish_spill(path):
            self._remap(path)
            return
        _remove_stale_spills(path)
        nb = len(self._base)
        # Append in place only where this process wrote the file's end: another process (a second replica on
        # this machine) may have appended rows it has mapped, which must never be written over. Otherwise a
        # new file replaces the name, and maps of the old one stay valid.
        if not self._appends_in_place(path):
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
        self._remap(path)

    def _remap(self, path: Path) -> None:
        total = self.rows
        self._base = self.open_base(path, self.dim, self.dtype.name, total)
        self._tail, self._tail_rows, self._joined = [], 0, None

    def _write_tail(self, fh, skip: int = 0) -> None:
        """The rows appended in memory after the first ``skip`` of them, piece by piece as they came (not
        joined into one copy first)."""
        for piece in self._tail:
            if skip >= len(piece):
                skip -= len(piece)
                continue
            fh.write(piece[skip:] if skip else piece)
            skip = 0

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


class _Spill:
    """A row file being written ahead of its save: ``target`` is ``path`` itself (appending after the base
    rows) or a file of this process's own that replaces ``path`` when saved; ``rows`` of the tail are in it."""

    def __init__(self, path: Path, target: Path, fh):
        self.path, self.target, self.fh, self.rows = path, target, fh, 0
        st = os.fstat(fh.fileno())
        self.file = (st.st_dev, st.st_ino)

    def valid(self, path: Path, base_rows: int, itemsize: int) -> bool:
        """Still the file to finish: the same path, and (appending in place) the same file, which nobody else
        wrote after us nor replaced."""
        if path != self.path:
            return False
        if self.target != path:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.file and st.st_size == (base_rows + self.rows) * itemsize


def _remove_stale_spills(path: Path) -> None:
    """Delete the spill files beside ``path`` whose writers are gone (killed mid-run): they never counted."""
    for stale in path.parent.glob(path.name + ".*.spill"):
        if not _alive(stale):
            stale.unlink(missing_ok=True)


def _alive(spill: Path) -> bool:
    """Is the process that named this spill file (``NAME.<pid>-<token>.spill``) still running?"""
    try:
        os.kill(int(spill.name.rsplit(".", 2)[-2].split("-")[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1
