"""``recommend --engine ray``: the blocks of queries of ``recommend`` spread over Ray actors.

Each actor opens the catalog read-only (a folder catalog must sit on a file system every node sees: one
machine, NFS, EFS, Filestore; a ``postgresql://`` catalog is reached by its URL, each node keeping its own
index cache), loads its index once, and runs ``recommend.BlockWork``, the very function
the local path runs, on whole blocks cut exactly as the local path cuts them: the rows are the local run's.
Results come back in key order (Ray Data's ``preserve_order``), so the driver writes and resumes its Parquet
parts as it does on one machine. Only query keys travel to the actors, and only each query's k results back.

Ray is imported inside the functions that run it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..engines.ray_engine import RayEngine, actors_for, configure_ray_data, ray_session
from .neighbours import product_inputs

log = logging.getLogger(__name__)


def recommend_on_ray(engine: RayEngine, catalog, work, key_blocks: list[np.ndarray]) -> Iterator[tuple]:
    """``(query keys, (item, rank, similar, similarity, rule flags), short)`` per block, in key order, as the
    local path's ``ordered_map(work, ...)`` yields them.

    Raises:
        LookalikeError: the cluster is too small or unreachable, or the run failed beyond Ray's retries (the
            parts written so far are kept; the same command resumes).
    """
    from ..core.errors import LookalikeError

    opts = engine.options
    if opts.gpus_per_actor:
        log.warning("recommend searches with FAISS on CPUs: --gpus-per-actor is not used")
    with ray_session(opts):  # Ray's own output goes to stderr
        import pyarrow as pa
        import ray
        import ray.data

        configure_ray_data(preserve_order=True)
        actors = actors_for(ray.cluster_resources(), opts, decoding=False)
        log.info("Ray: %d recommending actors (%g CPUs each) over %d blocks of queries", actors,
                 opts.cpus_per_actor, len(key_blocks))
        if not key_blocks:
            return
        tables = [pa.table({"block": np.full(len(keys), b, dtype=np.int64), "key": keys})
                  for b, keys in enumerate(key_blocks)]
        ds = ray.data.from_arrow(tables)
        ds = ds.map_batches(RecommendActor, batch_size=None, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=min(actors, len(key_blocks))),
                            fn_constructor_kwargs={"catalog": [ray.put(catalog.address)], "work": [ray.put(work)],
                                                   "threads": max(1, int(opts.cpus_per_actor))},
                            num_cpus=opts.cpus_per_actor)
        k = work.k
        try:
            for cols in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                yield rows_of(cols, k)
        except ray.exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise LookalikeError(f"the Ray run stopped ({reason}); the parts written so far are kept and the same "
                                 "command resumes") from exc


def rows_of(cols: dict[str, np.ndarray], k: int) -> tuple:
    """One actor output (a row per query: its results padded to k) as the local path's row columns."""
    qkeys = np.asarray(cols["key"], dtype=np.int64)
    counts = np.asarray(cols["count"], dtype=np.int64)
    mask = np.arange(k)[None, :] < counts[:, None]
    ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), mask.shape)[mask]
    similar = np.asarray(cols["similar"], dtype=np.int64).reshape(-1, k)[mask]
    sims = np.asarray(cols["similarity"], dtype=np.float32).reshape(-1, k)[mask]
    flags = np.asarray(cols["flags"], dtype=np.int8).reshape(-1, k)[mask]
    return qkeys, (np.repeat(qkeys, counts), ranks, similar, sims, flags), int(np.asarray(cols["short"]).sum())


class RecommendActor:
    """A recommending actor: the catalog opened read-only and its index loaded once; each call runs
    ``BlockWork`` on each whole block of query product keys it was given (their photos read here)."""

    def __init__(self, catalog: list, work: list, threads: int):
        import ray

        from ..catalog.catalog import Catalog

        try:
            import faiss

            faiss.omp_set_num_threads(threads)
        except ImportError:  # pragma: no cover - faiss is a dependency
            pass
        self.work = ray.get(work[0])
        # the location travels in the object store, so a database URL's password is not in the actor's spec
        self.catalog = Catalog.open(ray.get(catalog[0]))
        self.index = self.catalog.index
        self.dim = self.catalog.config.embedder.dim
        log.info("recommending actor (pid %d): %s, %s", os.getpid(), self.catalog.name, self.index.describe())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        k = self.work.k
        out: dict[str, list] = {"key": [], "count": [], "similar": [], "similarity": [], "flags": [], "short": []}
        blocks = batch["block"]
        for b in dict.fromkeys(blocks.tolist()):  # each block whole, in order
            qkeys = np.asarray(batch["key"][blocks == b], dtype=np.int64)
            _, (item, _, similar, sims, flags), _ = self.work(self.index, *product_inputs(self.catalog, qkeys))
            counts = np.bincount(np.searchsorted(qkeys, item), minlength=len(qkeys))
            mask = np.arange(k)[None, :] < counts[:, None]
            padded_keys = np.full((len(qkeys), k), -1, dtype=np.int64)
            padded_sims = np.full((len(qkeys), k), np.nan, dtype=np.float32)
            padded_flags = np.zeros((len(qkeys), k), dtype=np.int8)
            padded_keys[mask], padded_sims[mask], padded_flags[mask] = similar, sims, flags
            out["key"].append(qkeys)
            out["count"].append(counts)
            out["similar"].append(padded_keys)
            out["similarity"].append(padded_sims)
            out["flags"].append(padded_flags)
            out["short"].append(counts < min(k, self.work.n_candidates))
        return {name: np.concatenate(parts) for name, parts in out.items()}
