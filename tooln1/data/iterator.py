"""Deterministic, resumable batch iterator over a list of records, reading only this process's share.

Every process holds the same record list (ids and lengths are cheap); the *global* order is a seeded
permutation per epoch, ``np.random.default_rng([seed, epoch]).permutation(n)``, and global batch ``b``
of an epoch is ``perm[b*B:(b+1)*B]`` (the last partial batch is dropped, so every step sees exactly
``B`` examples). Process ``p`` of ``P`` takes the contiguous slice ``[p*B/P, (p+1)*B/P)`` of each
global batch, so the rows of a global array built with :func:`global_array` are in global-batch
order. The state is two integers (epoch, batch within the epoch), saved in every checkpoint: a
resumed run continues with exactly the batch after the last completed step — nothing skipped,
nothing repeated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from tooln1.sharding import batch_axes, batch_shards


@dataclasses.dataclass
class IteratorState:
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch

    def to_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "batch": int(self.batch)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IteratorState:
        return cls(int(d["epoch"]), int(d["batch"]))


class BatchIterator:
    """Global batches of ``batch_size`` indices into ``num_records``; this process's share.

    Args:
      num_records: dataset size.
      batch_size: global batch (all processes together); must be a multiple of ``process_count``.
      seed: shuffle seed (epoch ``e`` uses ``[seed, e]``).
      shuffle: False keeps the record order (every epoch the same).
      process_index / process_count: default ``jax.process_index()`` / ``jax.process_count()``.
    """

    def __init__(self, num_records: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 process_index: int | None = None, process_count: int | None = None):
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size % self.process_count:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {self.process_count} processes")
        if num_records < batch_size:
            raise ValueError(f"{num_records} records are fewer than one batch of {batch_size}")
        self.num_records = int(num_records)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.state = IteratorState()
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_records // self.batch_size

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
            else:
                self._perm = np.arange(self.num_records)
            self._perm_epoch = epoch
        return self._perm

    def global_indices(self, state: IteratorState | None = None) -> np.ndarray:
        """Indices of the whole global batch at ``state`` (default: the next one)."""
        s = self.state if state is None else state
        perm = self._permutation(s.epoch)
        return perm[s.batch * self.batch_size:(s.batch + 1) * self.batch_size]

    def next(self) -> np.ndarray:
        """This process's indices of the next global batch; advances the state."""
        idx = self.global_indices()
        lo = self.process_index * self.local_batch_size
        out = idx[lo:lo + self.local_batch_size]
        self.state.batch += 1
        if self.state.batch >= self.steps_per_epoch:
            self.state = IteratorState(self.state.epoch + 1, 0)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next()

    def get_state(self) -> dict[str, int]:
        return self.state.to_dict()

    def set_state(self, d: dict[str, Any]) -> None:
        self.state = IteratorState.from_dict(d)


def global_array(local: np.ndarray, mesh: Any) -> jax.Array:
    """A global ``jax.Array`` whose leading axis is split over the batch axes (data, fsdp) of ``mesh``, from this
    process's rows (``jax.make_array_from_process_local_data``; single-process: a sharded copy).
    Without a mesh, a plain device array."""
    local = np.asarray(local)
    if mesh is None:
        return jax.numpy.asarray(local)
    axes = batch_axes(mesh)
    shards = batch_shards(mesh)
    global_rows = local.shape[0] * jax.process_count()
    spec = PartitionSpec(axes if axes and global_rows % shards == 0 else None, *([None] * (local.ndim - 1)))
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))


__all__ = ["BatchIterator", "IteratorState", "global_array"]
