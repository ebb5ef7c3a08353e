"""Orbax checkpoints of a training phase: params, optimizer state, step, data position and RNG.

One :class:`Checkpointer` per phase directory (``<workdir>/checkpoints/sft``, ``.../grpo``). A
checkpoint holds two items:

* ``state``: the :class:`tooln1.training.updater.TrainState` (params + optimizer state) as a flat dict
  ``{"params/...": array}`` of its leaves keyed by their pytree paths, saved sharded (each process
  writes its shards) and restored straight onto the current shardings;
* ``meta``: JSON with ``step``, the data iterator state, the RNG key data, whether the phase is
  finished, and anything else the trainer records (e.g. the loss aggregation used).

Saving is asynchronous by default (``CheckpointManager`` finishes the write in the background; the
next save or :meth:`close` waits for it). ``keep`` bounds the number of checkpoints on disk.
Checkpoints are written atomically (temporary directory, then rename), so a run killed mid-save
resumes from the previous complete checkpoint. A checkpoint damaged later (a truncated array file)
is set aside by :meth:`Checkpointer.restore_latest`, which then resumes from the previous kept step.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    """A readable checkpoint that does not fit the state it is restored into (another model config)."""


class NoUsableCheckpoint(RuntimeError):
    """Every kept checkpoint of a phase is unreadable."""


def _key_str(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        elif isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(p.name)
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        elif isinstance(p, jax.tree_util.FlattenedIndexKey):
            parts.append(str(p.key))
        else:
            parts.append(str(p))
    return "/".join(parts)


def flatten(tree: Any) -> tuple[dict[str, Any], Any]:
    """``{path: leaf}`` and the treedef to rebuild ``tree``."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {}
    for path, leaf in leaves:
        key = _key_str(path)
        if key in flat:
            raise ValueError(f"checkpoint: two leaves share the key {key!r}")
        flat[key] = leaf
    return flat, treedef


def unflatten(flat: dict[str, Any], like: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[_key_str(p)] for p, _ in leaves])


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


class Checkpointer:
    """``save(step, state, meta)`` / ``restore(like) -> (state, meta)`` over an orbax CheckpointManager."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = True) -> None:
        flat, _ = flatten(state)
        meta = dict(meta, step=int(step))
        self.manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore_meta(self, step: int | None = None) -> dict[str, Any] | None:
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """Restore onto the structure, dtypes and shardings of ``like`` (a state of the same shape);
        ``None`` when there is no checkpoint. :class:`CheckpointMismatch` names an array whose stored
        shape differs or that is missing."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        flat_like, _ = flatten(like)
        abstract = {k: _abstract(v) for k, v in flat_like.items()}
        stored = self.manager.item_metadata(step)["state"] or {}
        where = f"checkpoint {self.directory}/{step}"
        missing = sorted(set(abstract) - set(stored))
        if missing:
            raise CheckpointMismatch(f"{where}: missing arrays {missing[:5]} "
                                     "(was it written by a different model config?)")
        for k, v in abstract.items():
            if hasattr(v, "shape") and tuple(stored[k].shape) != tuple(v.shape):
                raise CheckpointMismatch(f"{where}: {k} has shape {tuple(stored[k].shape)}, the model needs "
                                         f"{tuple(v.shape)} (was it written by a different model config?)")
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return unflatten(dict(out["state"]), like), dict(out["meta"])

    def restore_latest(self, like: Any, warn: Callable[[str], None]) -> tuple[Any, dict[str, Any]] | None:
        """:meth:`restore` of the newest *readable* checkpoint; ``None`` when there is none.

        An unreadable step (a truncated or garbled file) gets one ``warn`` line naming it, is moved
        aside to ``<directory>/unreadable-<step>`` (so later saves of that step work) and the previous
        kept step is tried. :class:`NoUsableCheckpoint` when every kept step is unreadable."""
        steps = sorted(self.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                return self.restore(like, step)
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - orbax/TensorStore raise bare Exception for bad files
                aside, n = os.path.join(self.directory, f"unreadable-{step}"), 1
                while os.path.exists(aside):  # an earlier unreadable copy of the same step
                    aside, n = os.path.join(self.directory, f"unreadable-{step}.{n}"), n + 1
                os.replace(os.path.join(self.directory, str(step)), aside)
                self.manager.reload()
                then = f"resuming from step {steps[i + 1]}" if i + 1 < len(steps) else "no earlier checkpoint kept"
                warn(f"warning: checkpoint step {step} is unreadable ({_root_cause(e)}); moved it to {aside}; {then}")
        # steps set aside by an earlier run count too: starting over must be the user's choice
        unreadable = steps or sorted({int(n.split("-")[1].split(".")[0]) for n in os.listdir(self.directory)
                                      if n.startswith("unreadable-")}, reverse=True)
        if unreadable:
            raise NoUsableCheckpoint(f"{self.directory}: no usable checkpoint (steps {', '.join(map(str, unreadable))} "
                                     "are unreadable); use a new workdir or --config.checkpoint.resume=false")
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _root_cause(e: BaseException) -> str:
    """The innermost error's first line: TensorStore's names the array and the file it could not read."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def rng_to_json(key: jax.Array) -> list[int]:
    return np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel().tolist()


def rng_from_json(data: list[int], impl_like: jax.Array) -> jax.Array:
    shape = jax.random.key_data(impl_like).shape
    return jax.random.wrap_key_data(np.asarray(data, np.uint32).reshape(shape),
                                    impl=jax.random.key_impl(impl_like))


__all__ = ["Checkpointer", "CheckpointMismatch", "NoUsableCheckpoint", "flatten", "unflatten", "rng_to_json",
           "rng_from_json"]
