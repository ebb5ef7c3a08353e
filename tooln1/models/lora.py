"""LoRA: low-rank adapters on a block's projections, the only weights a LoRA run trains.

An adapted kernel W (stacked [layers, ...]) gets A [layers, *in, r] and B [layers, r, *out], and its
projection computes ``x·W + (alpha/r)·(x·A)·B``. B starts at zero, so fresh adapters leave the model as it
was, and the same weights with B = 0 are the base model: the KL reference costs a copy of the adapters,
not of the model.

Written here rather than taken from qwix or ``flax.nnx.LoRA``: qwix adds adapters by intercepting a
module's matmul calls and creating their parameters at the call site, and ``nnx.LoRA`` wraps a
``Linear`` of its own; our blocks are one set of stacked kernels run under a single ``lax.scan``, so
an adapter has to be a stacked parameter of the block like the kernel it adapts (docs/architecture.md).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tooln1.models.config import ModelConfig
from tooln1.models.quantize import dense_kernel, quantize_block

# target -> (the block's submodule, the kernel's name in it, the einsum of its projection)
PROJECTIONS: dict[str, tuple[str, str, str]] = {
    "q": ("attention", "q", "btd,dhk->bthk"),
    "k": ("attention", "k", "btd,dhk->bthk"),
    "v": ("attention", "v", "btd,dhk->bthk"),
    "o": ("attention", "o", "bthk,hkd->btd"),
    "gate": ("mlp", "gate", "ri,io->ro"),
    "up": ("mlp", "up", "ri,io->ro"),
    "down": ("mlp", "down", "ri,io->ro"),
}
_RANK = "z"  # the rank's letter in the adapters' einsums (unused by the specs above)


class LoRAParam(nnx.Param):
    """An adapter weight: what the updater trains when the model has adapters."""


class Adapter(nnx.Module):
    """The A and B of one stacked kernel; called on a layer's slice like the kernel's own einsum."""

    def __init__(self, kernel: nnx.Param, spec: str, rank: int, alpha: float, rngs: nnx.Rngs, dtype: Any):
        x_spec, rest = spec.split(",")
        k_spec, y_spec = rest.split("->")
        ins = "".join(c for c in k_spec if c in x_spec)
        outs = "".join(c for c in k_spec if c not in x_spec)
        lead = "".join(c for c in x_spec if c not in ins)
        axes = kernel.get_metadata()["logical_axes"]
        layers, dims = kernel.shape[0], dict(zip(k_spec, kernel.shape[1:]))
        named = dict(zip(k_spec, axes[1:]))
        fan_in = math.prod(dims[c] for c in ins)
        bound = 1 / math.sqrt(fan_in)  # PEFT's kaiming-uniform(a=sqrt(5)) bound for A
        a_shape = (layers, *(dims[c] for c in ins), rank)
        self.a = LoRAParam(jax.random.uniform(rngs.params(), a_shape, jnp.float32, -bound, bound).astype(dtype),
                           logical_axes=("layers", *(named[c] for c in ins), "lora_rank"))
        self.b = LoRAParam(jnp.zeros((layers, rank, *(dims[c] for c in outs)), dtype),
                           logical_axes=("layers", "lora_rank", *(named[c] for c in outs)))
        self.scale = alpha / rank
        self.down = f"{x_spec},{ins}{_RANK}->{lead}{_RANK}"
        self.up = f"{lead}{_RANK},{_RANK}{outs}->{y_spec}"
        self.product = f"...{ins}{_RANK},...{_RANK}{outs}->...{k_spec}"

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.einsum(self.down, x, self.a[...].astype(x.dtype))
        return jnp.einsum(self.up, h, self.b[...].astype(x.dtype)) * jnp.asarray(self.scale, x.dtype)

    def delta(self) -> jax.Array:
        """``(alpha/r)·A·B`` in the kernel's layout, float32: what merging adds to the kernel."""
        a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
        return jnp.einsum(self.product, a, b) * self.scale


def adapted(module: nnx.Module, name: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """``y`` (the projection ``name`` of ``x``) plus its adapter's term when ``module`` has one."""
    adapter = getattr(module, f"{name}_lora", None)
    return y if adapter is None else y + adapter(x)


def attach(block: nnx.Module, config: ModelConfig, rngs: nnx.Rngs, dtype: Any) -> None:
    """Quantize the stacked ``block``'s kernels as ``config.base_quantization`` says, then give each of
    ``config.lora_targets`` an adapter of ``config.lora_rank`` (A and B in ``dtype``)."""
    quantize_block(block, config.base_quantization)
    for target in config.lora_targets:
        owner, name, spec = PROJECTIONS[target]
        module = getattr(block, owner)
        setattr(module, f"{name}_lora", Adapter(getattr(module, f"{name}_kernel"), spec, config.lora_rank,
                                                config.lora_alpha, rngs, dtype))


def add_adapters(model: Any, rank: int, alpha: float = 16.0, targets: tuple[str, ...] = tuple(PROJECTIONS),
                 quantization: str = "none", seed: int = 0, dtype: Any = jnp.float32) -> Any:
    """``model`` (a loaded `CausalLM`) with its base quantized and adapters added, in place; on a mesh
    the new variables are placed by their logical axes like every other parameter."""
    from tooln1.sharding import state_shardings

    if model.config.lora_rank:
        raise ValueError("add_adapters: the model already has adapters")
    config = model.config.replace(lora_rank=rank, lora_alpha=alpha, lora_targets=tuple(targets),
                                  base_quantization=quantization)
    attach(model.layers, config, nnx.Rngs(seed), dtype)
    model.config = config
    if model.mesh is not None:
        state = nnx.state(model.layers)
        nnx.update(model.layers, jax.device_put(state, state_shardings(state, model.mesh)))
    return model


def trainable(model: Any) -> type[nnx.Param]:
    """The parameters an update trains: the adapters when there are, else every parameter."""
    return LoRAParam if getattr(getattr(model, "config", None), "lora_rank", 0) else nnx.Param


def merged(model: Any) -> Any:
    """A model without adapters that computes what ``model`` computes: each adapted kernel plus
    ``(alpha/r)·A·B`` (a quantized one dequantized first), in the kernel's float dtype. Shares the
    arrays it does not change; ``model`` itself is left as it is."""
    config = model.config
    if not config.lora_rank:
        return model
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    float_dtype = jnp.dtype(config.param_dtype)
    for owner, name, _ in PROJECTIONS.values():
        module = getattr(copy.layers, owner)
        kernel = getattr(module, f"{name}_kernel")
        adapter = getattr(module, f"{name}_lora", None)
        quantized = hasattr(module, f"{name}_scale")
        if adapter is None and not quantized:
            continue
        dtype = float_dtype if quantized else kernel.dtype
        value = dense_kernel(module, name, jnp.float32)
        if adapter is not None:
            value = value + adapter.delta()
            delattr(module, f"{name}_lora")
        if quantized:
            delattr(module, f"{name}_scale")
        axes = kernel.get_metadata()["logical_axes"]
        setattr(module, f"{name}_kernel", nnx.Param(value.astype(dtype), logical_axes=axes))
    copy.config = config.replace(lora_rank=0, base_quantization="none")
    return copy


__all__ = ["Adapter", "LoRAParam", "PROJECTIONS", "adapted", "add_adapters", "attach", "merged", "trainable"]
