"""Words: the catalog model's own text tower, or a LiT text tower added to an image model.

A part of ``Catalog`` (``catalog.py``), which inherits it; it reads the catalog's attributes set there.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.config import EncodeOptions
from ..core.errors import (
    ModelFileError,
    QueryError,
)
from ..models.registry import no_text_tower
from ..models.texttower import TextTower, load_text_tower

log = logging.getLogger(__name__)

TEXT_TOWER_FILE = "text-tower.lkm"  # a LiT text tower added with `lookalike text add` (a copy of the file)
MAX_TEXT_CHARS = 1000  # words in one query (the REST API's limit too)


class TextSearch:
    """Words in the catalog's vector space: its model's own text tower, or an added LiT tower (run in NumPy,
    without the image model)."""

    def encode_text(self, texts: Sequence[str], options: EncodeOptions | None = None) -> np.ndarray:
        """Texts -> N x D float32 unit vectors in the space of the stored vectors: the added text tower (LiT, in
        NumPy: the image model is not loaded), else the catalog model's own.

        Raises:
            NoTextModelError: neither exists. ModelFileError: the added tower's file is missing or changed.
        """
        self.check_text(texts)
        if self.text_tower is not None:
            return self.text_tower.encode(list(texts))
        return self.encoder(options).encode_text(list(texts))

    @property
    def has_text(self) -> bool:
        """Can the catalog be searched by words: its model has a text tower, or a LiT text tower was added."""
        return bool(self.config.embedder.text or self.config.extra.get("text_tower"))

    @property
    def text_tower(self) -> TextTower | None:
        """The text tower added with ``add_text_tower`` (None: none), loaded on first use and checked against
        the digest recorded when it was added.

        Raises:
            ModelFileError: its file is gone or has changed since.
        """
        record = self.config.extra.get("text_tower")
        if not record:
            return None
        if self._text_tower is None:
            path = self.folder / record["file"] if record.get("file") else Path(record["path"])
            if not path.is_file():
                raise ModelFileError(f"{self.name}: its text tower {path} is gone; add it again with "
                                     f"`lookalike text add TOWER.lkm --catalog {self.name}`")
            tower = load_text_tower(path)
            if tower.digest != record["digest"]:
                raise ModelFileError(f"{self.name}: its text tower {path} changed since it was added "
                                     f"(file:{tower.digest} != file:{record['digest']}); add it again with "
                                     "`lookalike text add`")
            tower.check_fits(self.name, self.config.embedder)
            self._text_tower = tower
        return self._text_tower

    def add_text_tower(self, path: str | Path) -> TextTower:
        """Give the catalog search by words with a text tower trained against its image model (LiT, ``train clip
        --image-model NAME --lock-image``); no vector is embedded again. A folder catalog keeps a copy of the file
        (``text-tower.lkm``), a database catalog its absolute path; both record its digest. Replaces a tower
        added before.

        Raises:
            ModelFileError: not a text tower, or trained against another image model, other weights or another
                dimension (one line naming both).
        """
        tower = load_text_tower(path)
        tower.check_fits(self.name, self.config.embedder)
        record = {"digest": tower.digest, "image_model": tower.image.name, "image_weights": tower.image.weights,
                  "added": dt.datetime.now(dt.timezone.utc).isoformat(), "source": str(Path(path).resolve()),
                  "metrics": tower.meta.training.get("metrics", {}).get("after", {})}
        if self.uploads_in_store:
            record["path"] = str(Path(path).resolve())
        else:
            tmp = self.path / (TEXT_TOWER_FILE + ".tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(self.path / TEXT_TOWER_FILE)
            record["file"] = TEXT_TOWER_FILE
        self._record(text_tower=record)
        self._text_tower, self._encoder = None, None
        return self.text_tower

    def remove_text_tower(self) -> bool:
        """Drop the added text tower (the model's own, if any, is searched again); returns whether there was one."""
        record = self.config.extra.get("text_tower")
        if not record:
            return False
        self._record(text_tower=None)
        if record.get("file") and not self.uploads_in_store:
            (self.path / record["file"]).unlink(missing_ok=True)
        self._text_tower, self._encoder = None, None
        return True

    def check_text(self, texts: Sequence[str], need_model: bool = True) -> None:
        """Refuse words the catalog cannot search by, before any model is loaded; ``need_model`` False: words
        searched as keywords (``keywords.py``), which need no text tower.

        Raises:
            NoTextModelError: the catalog's model embeds photos only (the message names models with a text tower).
            QueryError: empty words.
        """
        if texts and need_model and not self.has_text:
            raise no_text_tower(self.config.embedder.name)
        if any(not str(t).strip() for t in texts):
            raise QueryError("empty words in the query; write what to look for, e.g. --text 'red summer dress'")
        longest = max((len(str(t)) for t in texts), default=0)
        if longest > MAX_TEXT_CHARS:
            raise QueryError(f"words of {longest:,} characters; at most {MAX_TEXT_CHARS:,} are taken (a text+image "
                             "model reads only its first few dozen words anyway): shorten them")
