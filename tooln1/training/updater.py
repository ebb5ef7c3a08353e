"""Jitted update machinery shared by GRPO and SFT: AdamW, mini-batch optimizer steps, micro-batch
gradient accumulation, sharded state, non-finite skipping, batched log-probs and the reference copy.

A *loss object* (:class:`tooln1.grpo.GRPOLoss`, :class:`tooln1.training.sft_loss.SFTLoss`) is a hashable callable
``loss(model, batch, totals) -> (loss, metrics)`` with ``totals(batch) -> dict`` (additive
aggregation denominators, e.g. token and sequence counts), ``required_keys`` and, optionally,
``optional_keys`` (passed on when the batch has them). The updater:

1. splits the rollout batch (leading axis N) into ``num_mini_batches`` contiguous mini-batches, one
   optimizer step each (paper: 4 per rollout step, so ratios move away from 1 after the first);
2. inside a mini-batch runs ``N / num_mini_batches / micro_batch_size`` micro-batches under
   ``lax.scan``, each normalised by the *mini-batch's* totals, so the summed gradient is exactly
   the gradient of the mini-batch loss (global token-mean), whatever the micro-batch size;
3. clips the global gradient norm, applies AdamW, and keeps params and optimizer state unchanged
   (reporting ``skipped``) when the loss or gradient is not finite.

Metrics of the loss are per-token means (weighted by ``num_tokens`` across micro- and mini-batches);
keys ending in ``_max``/``_min`` are reduced by max/min. Usage::

    updater = Updater(model, GRPOLoss(temperature=0.7), OptimizerConfig(), num_mini_batches=4,
                      micro_batch_size=8)
    reference = ReferencePolicy(nnx.state(model, trainable(model)), offload_to_host=True)  # before any step
    state = updater.init(model)          # state.params alias the model's arrays (then donated)
    batch["old_logprobs"] = updater.compute_logprobs(state.params, batch)  # not with GRPOLoss(on_policy=True)
    batch["ref_logprobs"] = updater.compute_logprobs(reference.params(), batch)
    state, metrics = updater.step(state, batch)
    policy = updater.model(state)        # the updated CausalLM for the sampler
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tooln1.models.lora import trainable
from tooln1.sharding import batch_axes, platform

Array = jax.Array



# --------------------------------------------------------------------------------------------
# optimiser


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping and a constant learning rate (docs/design.md §8 defaults).

    verl's warm-up quirk gives lr 0 on the very first rollout step; that is deliberately not copied.
    Weight decay is decoupled (torch AdamW semantics: ``p -= lr·wd·p``) and, as in verl, applies to
    every parameter.
    """

    learning_rate: float = 1e-6
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if not self.learning_rate >= 0:
            raise ValueError(f"OptimizerConfig.learning_rate must be >= 0, got {self.learning_rate}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"OptimizerConfig: betas must be in [0, 1), got ({self.b1}, {self.b2})")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError(f"OptimizerConfig: need eps > 0 and weight_decay >= 0, "
                             f"got {self.eps}, {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"OptimizerConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm`` then AdamW at a constant learning rate."""
    adamw = optax.adamw(
        learning_rate=config.learning_rate, b1=config.b1, b2=config.b2, eps=config.eps,
        weight_decay=config.weight_decay,
    )
    if config.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)


def freeze(frozen_layers: int) -> optax.GradientTransformation:
    """Zero updates for the embedding and the lowest ``frozen_layers`` stacked blocks: after AdamW it
    keeps weight decay off what `ModelConfig.frozen_layers` freezes (their gradients are already 0)."""

    def zero(path, update):
        top = getattr(path[0], "key", None)
        if top == "embed":
            return jnp.zeros_like(update)
        return update.at[:frozen_layers].set(0) if top == "layers" else update

    return optax.stateless(lambda updates, params=None: jax.tree_util.tree_map_with_path(zero, updates))


# --------------------------------------------------------------------------------------------
# state


class TrainState(flax.struct.PyTreeNode):
    """What an update changes: the trainable params (an ``nnx.State`` of ``nnx.Param``, or of the
    adapters' ``LoRAParam`` when the model has adapters) and the
    optimizer state. Pure pytree: checkpoint it with orbax, shard it with :attr:`Updater.state_shardings`."""

    params: Any
    opt_state: Any


def _sharding_of(x: Any) -> Any:
    return getattr(x, "sharding", None)


def _replicated_like(sharding: Any) -> Any:
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())
    return sharding


def _reduce_metrics(stacked: dict[str, Array], weight: Array, axis: int = 0) -> dict[str, Array]:
    """Combine metrics stacked along ``axis``: max/min for ``*_max``/``*_min``, sum for
    ``num_tokens``, otherwise the ``weight``-weighted mean."""
    total = weight.sum(axis)
    out = {}
    for key, val in stacked.items():
        if key.endswith("_max"):
            out[key] = val.max(axis)
        elif key.endswith("_min"):
            out[key] = val.min(axis)
        elif key == "num_tokens":
            out[key] = val.sum(axis)
        else:
            out[key] = (val * weight).sum(axis) / jnp.maximum(total, 1e-9)
    return out


# --------------------------------------------------------------------------------------------
# the updater


class Updater:
    """Owns the jitted update step for one model architecture, loss and batch layout.

    Args:
      model: the ``CausalLM`` (params may be sharded on a mesh; their shardings are kept for the
        params and mirrored onto the optimizer state).
      loss_fn: a loss object (see module docstring).
      optimizer: an :class:`OptimizerConfig` or any optax transformation.
      num_mini_batches: optimizer steps per call of :meth:`step` (contiguous slices of the batch).
      micro_batch_size: rows per gradient-accumulation micro-batch (default: the whole mini-batch).
      remat: override ``model.config.remat`` (recompute each block in the backward pass).
      donate: donate the incoming :class:`TrainState` buffers to the step.
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Callable[..., tuple[Array, dict[str, Array]]],
        optimizer: OptimizerConfig | optax.GradientTransformation = OptimizerConfig(),
        *,
        num_mini_batches: int = 1,
        micro_batch_size: int | None = None,
        remat: bool | None = None,
        donate: bool = True,
    ):
        if not isinstance(num_mini_batches, (int, np.integer)) or num_mini_batches < 1:
            raise ValueError(f"num_mini_batches must be a positive int, got {num_mini_batches!r}")
        if micro_batch_size is not None and (not isinstance(micro_batch_size, (int, np.integer))
                                             or micro_batch_size < 1):
            raise ValueError(f"micro_batch_size must be a positive int or None, got {micro_batch_size!r}")
        if getattr(loss_fn, "on_policy", False) and num_mini_batches != 1:
            raise ValueError(
                f"{type(loss_fn).__name__}(on_policy=True) takes the old log-probs from the current policy, which "
                f"holds only for one optimizer step per batch; got num_mini_batches={num_mini_batches}"
            )
        config = getattr(model, "config", None)
        if remat is not None and config is not None and config.remat != remat:
            graphdef, state = nnx.split(model)
            model = nnx.merge(graphdef, state)  # a new view sharing the arrays, with remat switched
            model.config = config.replace(remat=remat)
        self.loss_fn = loss_fn
        self.num_mini_batches = int(num_mini_batches)
        self.micro_batch_size = None if micro_batch_size is None else int(micro_batch_size)
        self.optimizer_config = optimizer if isinstance(optimizer, OptimizerConfig) else None
        self.optimizer = make_optimizer(optimizer) if isinstance(optimizer, OptimizerConfig) else optimizer
        if getattr(config, "frozen_layers", 0):
            self.optimizer = optax.chain(self.optimizer, freeze(config.frozen_layers))

        # with adapters (`tooln1.models.lora`) only they are trained; the base weights stay in ``rest``
        self.graphdef, params, self.rest = nnx.split(model, trainable(model), ...)
        self.param_shardings = jax.tree.map(_sharding_of, params)
        leaves = jax.tree.leaves(self.param_shardings)
        self.mesh = leaves[0].mesh if leaves and isinstance(leaves[0], NamedSharding) else None
        self._skip_by_branch = platform(self.mesh) == "cpu"  # how a non-finite step is skipped (see mini_step)
        replicated = _replicated_like(leaves[0]) if leaves else None
        opt_shapes = jax.eval_shape(self.optimizer.init, params)
        self.opt_shardings = optax.tree_map_params(
            self.optimizer, lambda _, s: s, opt_shapes, self.param_shardings,
            transform_non_params=lambda _: replicated,
        )
        self.state_shardings = TrainState(params=self.param_shardings, opt_state=self.opt_shardings)
        self._param_shapes = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_sharding_of(x)), params)
        self._init = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)
        self._step = jax.jit(
            self._train_step,
            in_shardings=(self.state_shardings, None, None),
            out_shardings=(self.state_shardings, None),
            static_argnums=(3,),
            donate_argnums=(0,) if donate else (),
        )
        self._logprobs = jax.jit(self._batched_logprobs, static_argnames=("micro_batch_size", "loss_fn"))

    # -- public -----------------------------------------------------------------------------
    def init(self, model_or_params: Any) -> TrainState:
        """Fresh optimizer state for a model's params (an ``nnx.State`` of params also works).

        The returned params alias the model's arrays; :meth:`step` donates them, so afterwards read
        the policy from :meth:`model` (or ``nnx.update(model, state.params)``).
        """
        params = model_or_params
        if isinstance(model_or_params, nnx.Module):
            params = nnx.state(model_or_params, trainable(model_or_params))
        return TrainState(params=params, opt_state=self._init(params))

    def model(self, state: TrainState) -> Any:
        """The ``CausalLM`` with the state's params (shares the arrays, no copy)."""
        return nnx.merge(self.graphdef, state.params, self.rest)

    def check_batch(self, batch: Mapping[str, Any], loss_fn: Any = None) -> tuple[int, int, int]:
        """Validate a batch before any compile; returns (N, rows per mini-batch, rows per micro-batch)."""
        loss_fn = loss_fn or self.loss_fn
        required = tuple(getattr(loss_fn, "required_keys", tuple(batch)))
        missing = [k for k in required if k not in batch]
        if missing:
            raise KeyError(f"update batch is missing {missing}; {type(loss_fn).__name__} needs {list(required)}")
        sizes = {k: np.shape(batch[k])[0] if np.ndim(batch[k]) else None for k in required}
        n = next(iter(sizes.values()), None)
        bad = {k: s for k, s in sizes.items() if s != n}
        if n is None or bad:
            raise ValueError(f"update batch: every array needs the same leading size N; got {sizes}")
        m = self.num_mini_batches
        if n % m:
            raise ValueError(f"update batch: N={n} rows do not split into num_mini_batches={m}")
        mini = n // m
        micro = self.micro_batch_size or mini
        if mini % micro:
            raise ValueError(
                f"update batch: a mini-batch of {mini} rows (N={n} / num_mini_batches={m}) is not a "
                f"multiple of micro_batch_size={micro}"
            )
        self._check_groups(micro, "a micro-batch")
        return n, mini, micro

    def _check_groups(self, rows: int, what: str) -> None:
        """A loss that packs the rows sharing a prompt (``rows_per_prompt``, the G responses of
        ``grpo.share_prompt``) needs every slice it sees to hold whole groups."""
        group = getattr(self.loss_fn, "rows_per_prompt", 1)
        if rows % group:
            raise ValueError(f"update batch: {what} of {rows} rows is not a whole number of groups of "
                             f"{type(self.loss_fn).__name__}.rows_per_prompt={group}")

    def step(self, state: TrainState, batch: Mapping[str, Any], loss_fn: Any = None
             ) -> tuple[TrainState, dict[str, Array]]:
        """``num_mini_batches`` optimizer steps over ``batch``; returns the new state and metrics.

        Metrics (device scalars; fetch them once per rollout step): ``loss`` and ``grad_norm``
        (pre-clip) averaged over mini-batches, ``grad_norm_max``, ``skipped`` (mini-batches whose
        update was dropped for a non-finite loss/gradient), ``learning_rate`` when known, and the
        loss object's metrics token-weighted over the whole batch. A skipped mini-batch's metrics
        are NaN and stay visible in the averages (``skipped`` says why).

        ``state`` must carry :attr:`state_shardings` (restore orbax checkpoints against them).
        ``loss_fn`` (hashable, static) replaces the Updater's loss for this batch: a variant with
        per-batch static settings (`tooln1.grpo.GRPOLoss.packed_length`); one compile per variant.
        """
        loss_fn = loss_fn or self.loss_fn
        self.check_batch(batch, loss_fn)
        required = tuple(getattr(loss_fn, "required_keys", tuple(batch)))
        optional = tuple(k for k in getattr(loss_fn, "optional_keys", ()) if k in batch)
        batch = {k: batch[k] for k in required + optional}
        return self._step(state, self.rest, batch, loss_fn)

    def compute_logprobs(self, params: Any, batch: Mapping[str, Any], micro_batch_size: int | None = None,
                         loss_fn: Any = None) -> Array:
        """``loss_fn.logprobs`` over the whole batch in micro-batches (no gradient); for the old
        log-probs (current params) and the reference log-probs (:class:`ReferencePolicy`)."""
        batch, micro = self._logprob_batch(batch, micro_batch_size)
        return self._logprobs(params, self.rest, batch, micro_batch_size=micro, loss_fn=loss_fn or self.loss_fn)

    # -- lowering without running (tooln1-fit: compile for a target from a CPU machine) ----
    def abstract_state(self) -> TrainState:
        """The shapes, dtypes and shardings of :meth:`init`'s state, as ``jax.ShapeDtypeStruct``s."""
        opt = jax.eval_shape(self.optimizer.init, self._param_shapes)
        opt = jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.opt_shardings, opt,
                           is_leaf=lambda s: s is None)
        return TrainState(params=self._param_shapes, opt_state=opt)

    def lower(self, batch: Mapping[str, Any], state: TrainState | None = None) -> jax.stages.Lowered:
        """Lower :meth:`step` for a batch of these shapes (arrays or ``ShapeDtypeStruct``s with
        shardings) without running it; ``state`` defaults to :meth:`abstract_state`."""
        self.check_batch(batch)
        required = tuple(getattr(self.loss_fn, "required_keys", tuple(batch)))
        batch = {k: batch[k] for k in required}
        return self._step.lower(state or self.abstract_state(), self.rest, batch, self.loss_fn)

    def lower_logprobs(self, batch: Mapping[str, Any], micro_batch_size: int | None = None,
                       params: Any = None) -> jax.stages.Lowered:
        """Lower :meth:`compute_logprobs` (``params`` default: the abstract params)."""
        batch, micro = self._logprob_batch(batch, micro_batch_size)
        params = self._param_shapes if params is None else params
        return self._logprobs.lower(params, self.rest, batch, micro_batch_size=micro, loss_fn=self.loss_fn)

    def _logprob_batch(self, batch: Mapping[str, Any], micro_batch_size: int | None) -> tuple[dict[str, Any], int]:
        keys = tuple(getattr(self.loss_fn, "logprob_keys", tuple(batch)))
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"compute_logprobs: batch is missing {missing}")
        batch = {k: batch[k] for k in keys}
        n = np.shape(batch[keys[0]])[0]
        micro = micro_batch_size or self.micro_batch_size or n
        if n % micro:
            raise ValueError(f"compute_logprobs: N={n} rows are not a multiple of micro_batch_size={micro}")
        self._check_groups(micro, "a log-prob micro-batch")
        return batch, micro

    # -- jitted bodies ----------------------------------------------------------------------
    def _constrain_rows(self, x: Array, axis: int) -> Array:
        """Shard the row axis of a reshaped batch array over the mesh's batch axes."""
        if self.mesh is None:
            return x
        chosen, size = [], 1
        for a in batch_axes(self.mesh):
            if x.shape[axis] % (size * self.mesh.shape[a]) == 0:
                chosen.append(a)
                size *= self.mesh.shape[a]
        spec = [None] * x.ndim
        spec[axis] = tuple(chosen) if chosen else None
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(*spec)))

    def _train_step(self, state: TrainState, rest: Any, batch: dict[str, Array], loss_fn: Any):
        n = next(iter(batch.values())).shape[0]
        m = self.num_mini_batches
        mini = n // m
        micro = self.micro_batch_size or mini
        k = mini // micro

        def split(x: Array) -> Array:
            return self._constrain_rows(jnp.asarray(x).reshape(m, k, micro, *x.shape[1:]), 2)

        batches = jax.tree.map(split, batch)
        grad_fn = jax.value_and_grad(
            lambda params, rest, xb, totals: loss_fn(nnx.merge(self.graphdef, params, rest), xb, totals), has_aux=True)
        f32 = lambda p: jnp.zeros(p.shape, jnp.float32)  # noqa: E731

        def mini_batch_grads(params, mbatch):
            # totals are additive: sum the per-micro-batch totals to get the mini-batch's.
            totals = jax.tree.map(lambda t: t.sum(0), jax.vmap(loss_fn.totals)(mbatch))
            if k == 1:  # no accumulation: skips the f32 accumulator (a params-sized buffer) and its adds
                (loss, metrics), grads = grad_fn(params, rest, jax.tree.map(lambda x: x[0], mbatch), totals)
                return loss, metrics, grads

            def micro_step(acc, xb):
                grads_acc, loss_acc = acc
                (loss, metrics), grads = grad_fn(params, rest, xb, totals)
                grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
                return (grads_acc, loss_acc + loss), metrics

            init = (jax.tree.map(f32, params), jnp.zeros((), jnp.float32))
            (grads, loss), micro_metrics = jax.lax.scan(micro_step, init, mbatch)
            weight = micro_metrics.get("num_tokens", jnp.ones((k,), jnp.float32))
            return loss, _reduce_metrics(micro_metrics, weight), grads

        def mini_step(carry, mbatch):
            params, opt_state = carry
            loss, metrics, grads = mini_batch_grads(params, mbatch)
            grad_norm = optax.tree.norm(grads)
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

            def apply(params, opt_state, grads):
                grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
                updates, new_opt = self.optimizer.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), new_opt

            # A skipped step keeps params and moments as they were: a branch on a CPU, where a select
            # over every leaf makes XLA:CPU copy the moments; a select elsewhere, which XLA:TPU fuses.
            if self._skip_by_branch:
                carry = jax.lax.cond(ok, apply, lambda p, o, g: (p, o), params, opt_state, grads)
            else:
                carry = jax.tree.map(lambda new, old: jnp.where(ok, new, old), apply(params, opt_state, grads),
                                     (params, opt_state))
            metrics.update(loss=loss, grad_norm=grad_norm, skipped=(~ok).astype(jnp.float32))
            return carry, metrics

        if m == 1:  # no loop: a one-trip scan would copy the params and optimizer state through its carry
            first = jax.tree.map(lambda x: x[0], batches)
            (params, opt_state), per_mini = mini_step((state.params, state.opt_state), first)
            per_mini = jax.tree.map(lambda x: x[None], per_mini)
        else:
            (params, opt_state), per_mini = jax.lax.scan(mini_step, (state.params, state.opt_state), batches)
        loss, grad_norm, skipped = per_mini.pop("loss"), per_mini.pop("grad_norm"), per_mini.pop("skipped")
        weight = per_mini.get("num_tokens", jnp.ones((m,), jnp.float32))
        metrics = _reduce_metrics(per_mini, weight)
        metrics.update(
            loss=loss.mean(), grad_norm=grad_norm.mean(), grad_norm_max=grad_norm.max(), skipped=skipped.sum()
        )
        if self.optimizer_config is not None:
            metrics["learning_rate"] = jnp.asarray(self.optimizer_config.learning_rate, jnp.float32)
        return TrainState(params=params, opt_state=opt_state), metrics

    def _batched_logprobs(self, params: Any, rest: Any, batch: dict[str, Array], micro_batch_size: int,
                          loss_fn: Any) -> Array:
        n = next(iter(batch.values())).shape[0]
        k = n // micro_batch_size

        def split(x: Array) -> Array:
            return self._constrain_rows(jnp.asarray(x).reshape(k, micro_batch_size, *x.shape[1:]), 1)

        model_fn = lambda xb: loss_fn.logprobs(nnx.merge(self.graphdef, params, rest), xb)  # noqa: E731
        out = jax.lax.map(model_fn, jax.tree.map(split, batch))
        return out.reshape(n, *out.shape[2:])


# --------------------------------------------------------------------------------------------
# reference policy


def _memory_kind_supported(sharding: Any, kind: str) -> bool:
    try:
        return any(m.kind == kind for d in sharding.device_set for m in d.addressable_memories())
    except Exception:  # backends without the memories API
        return False


class ReferencePolicy:
    """A frozen copy of the initial params for the KL reference (docs/design.md §8).

    Create it before the first :meth:`Updater.step` (which donates the live params). With
    ``offload_to_host`` the copy lives in pinned host memory (same shardings, ``pinned_host``
    memory kind; host numpy as a fallback) and :meth:`params` moves it to the devices only while
    reference log-probs are computed; drop the returned tree right after.

    ``dtype`` (e.g. the compute dtype) stores the copy cast to it: the model casts every parameter
    to its compute dtype before use, so a bf16 copy of fp32 params gives the same log-probs at
    half the memory.
    """

    def __init__(self, params: Any, offload_to_host: bool = False, dtype: Any = None):
        if dtype is not None:
            params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p))(params)
        self.offload_to_host = offload_to_host
        self.shardings = jax.tree.map(_sharding_of, params)
        leaves = jax.tree.leaves(self.shardings)
        self._mode = "device"
        if offload_to_host:
            if leaves and all(_memory_kind_supported(s, "pinned_host") for s in leaves):
                host = jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), self.shardings)
                self._params = jax.device_put(params, host)
                self._mode = "pinned_host"
            else:
                if not all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(params)):
                    raise ValueError("ReferencePolicy: host offload needs pinned_host memory on multi-host runs")
                self._params = jax.tree.map(lambda x: np.array(jax.device_get(x)), params)
                self._mode = "numpy"
        else:
            self._params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.shardings)(params)

    def params(self) -> Any:
        """The reference params on the devices (a fresh transfer when offloaded)."""
        if self._mode == "device":
            return self._params
        return jax.device_put(self._params, self.shardings)
