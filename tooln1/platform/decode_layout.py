"""How the rollout engine's decoding copy of the weights is laid out on each platform.

Training keeps one layout everywhere (`tooln1.models.decoder`: the blocks stacked and run under one scan,
kernels stored [in, out], the head tied as the checkpoint has it). Decoding reads every weight once a step
for a few rows, and each compiler has a faster layout for that:

* **CPU, per layer**: one block per layer, run unrolled (`split_layers`). Under the layer scan XLA:CPU
  copies each layer's weights out of the stack before its matmuls (and widens a 16-bit stack to float32
  every round). It pays for MLP kernels of `PER_LAYER_MIN_KERNEL_BYTES` or more and for any 16-bit
  model, over a training run or a long evaluation: the unrolled programs compile several times longer.
* **CPU, 16-bit**: embedding rows gathered from a float32 table, logits from a separate [D, V] head in the
  compute dtype (`float32_lookup`): XLA:CPU widens a 16-bit gather's whole table to float32 at every call
  inside a loop, and its 16-bit matmul wants the head [in, out]. No one-row decode width (a one-row
  16-bit matmul takes a slow path), and KV pages hold bfloat16 as its bits (`tooln1.platform.kv_storage`).
* **TPU**: q/k/v kernels stored [layers, heads, embed, D] (`heads_major`), the layout XLA:TPU's decode
  matmuls read; it copied the [layers, embed, heads, D] stacks into it every round.
* **KV writes, TPU**: whole 128-lane rows (`kv_writes`), which XLA:TPU scatters at once, where it ran
  the portable per-token writes as a loop of one step per token and kv head.
* **Prefill, GPU and TPU**: a chunk's attention over its context and itself as one kernel a layer
  (`tooln1.models.chunk_attention`: Pallas Triton on a GPU for 16-bit models with power-of-two heads,
  splash attention on a TPU), where the portable blockwise path is a sequential loop of one ``lax.cond``
  per pair of blocks (`prefill_attention`).
* **KV pool, TPU**: one pool of keys and values interleaved by head, which JAX's ragged paged attention
  kernel reads for prefill chunks and decode steps alike, each prompt over its own pages
  (`tooln1.models.ragged_attention`, `kv_pool`), on a chip of one TensorCore where the head fits it.

The engine asks `DecodeLayout.of` which layout a model gets on a mesh and `decoding_copy` for the copy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from tooln1.models import chunk_attention, ragged_attention
from tooln1.models.config import ModelConfig
from tooln1.models.decoder import Attention, CausalLM
from tooln1.models.lora import merged
from tooln1.models.paged_attention import tensor_cores
from tooln1.platform.kv_storage import pool_dtype
from tooln1.sharding import platform

LAYER_LAYOUTS = ("auto", "stacked", "per_layer")
PER_LAYER_MIN_KERNEL_BYTES = 2 << 20  # a layer's MLP kernel from which "auto" splits the layers on a CPU


@dataclasses.dataclass(frozen=True)
class DecodeLayout:
    """The decoding copy's layout and KV pages for one model on one platform. Hashable."""

    per_layer: bool = False  # `split_layers`
    float32_lookup: bool = False  # `float32_lookup`
    heads_major: bool = False  # `heads_major`
    kv_dtype: Any = jnp.dtype(jnp.float32)  # what the KV pages hold (`tooln1.platform.kv_storage`)
    narrowest: int = 1  # the narrowest decode width worth compiling
    prefill_attention: str = "blockwise"  # a chunk's attention: "blockwise", "pallas_gpu", "splash" or "ragged"
    kv_writes: str = "tokens"  # how KV is written to the pages: "tokens" or "rows" (`kv_writes`)
    kv_pool: str = "split"  # "split" (keys and values apart) or "ragged" (`kv_pool`)

    @classmethod
    def of(cls, config: ModelConfig, mesh: Mesh | None, layer_layout: str = "auto") -> DecodeLayout:
        """The layout of ``config``'s model on ``mesh`` (None: the default device). ``layer_layout``:
        "stacked" (one scan over the layers, as trained), "per_layer" (`split_layers`), or "auto":
        per_layer on a CPU for MLP kernels of `PER_LAYER_MIN_KERNEL_BYTES` or more or a 16-bit model."""
        if layer_layout not in LAYER_LAYOUTS:
            raise ValueError(f"layer_layout {layer_layout!r}; expected one of {LAYER_LAYOUTS}")
        target, dtype = platform(mesh), jnp.dtype(config.dtype)
        cpu, half = target == "cpu", dtype.itemsize == 2
        if layer_layout == "auto":
            kernel = config.hidden_size * config.intermediate_size * dtype.itemsize
            per_layer = cpu and (kernel >= PER_LAYER_MIN_KERNEL_BYTES or half)
        else:
            per_layer = layer_layout == "per_layer"
        pool = kv_pool(config, target, tensor_cores(mesh))
        return cls(per_layer=per_layer, float32_lookup=per_layer and half,
                   heads_major=not per_layer and target == "tpu", kv_dtype=pool_dtype(dtype, target),
                   narrowest=2 if cpu and half else 1,
                   prefill_attention="ragged" if pool == "ragged" else prefill_attention(config, target),
                   kv_writes=kv_writes(target), kv_pool=pool)


def prefill_attention(config: ModelConfig, target: str) -> str:
    """How a prefill chunk attends on ``target`` (`tooln1.models.chunk_attention`): "pallas_gpu" on a GPU
    where the kernel takes the model's heads and dtype, "splash" on a TPU, else "blockwise" (the portable
    path, the tests' reference)."""
    if target == "tpu":
        return "splash"
    fits = chunk_attention.kernel_fits(config.head_dim, config.dtype)
    return "pallas_gpu" if target in ("gpu", "cuda") and fits else "blockwise"


def kv_writes(target: str) -> str:
    """How keys and values are written to the pages on ``target``: "rows" on a TPU (whole 128-lane rows,
    `tooln1.models.paged_attention.write_rows`: XLA:TPU expands a scatter into a row's lanes into a loop
    over the tokens), else "tokens" (`write_pages`, the portable path and the tests' reference)."""
    return "rows" if target == "tpu" else "tokens"


def kv_pool(config: ModelConfig, target: str, cores: int) -> str:
    """The KV pages' layout on ``target`` with ``cores`` TensorCores a device: "ragged" (one pool read by JAX's
    TPU ragged paged attention for prefill and decode, `tooln1.models.ragged_attention`) on a TPU of one
    core (v5e, v6e) where the kernel takes the model's heads; else "split" (`tooln1.models.paged_attention`:
    a v4 or v5p device's paged-attention kernel splits decode over its two cores, which the ragged one
    does not)."""
    ragged = target == "tpu" and cores == 1 and ragged_attention.kernel_fits(config.head_dim)
    return "ragged" if ragged else "split"


def decoding_copy(graphdef: nnx.GraphDef, state: nnx.State, layout: DecodeLayout) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) of the decoding copy of the model ``nnx.split`` into ``graphdef`` and ``state``:
    its float parameters in the compute dtype, laid out as ``layout`` says. Arrays already in the
    compute dtype are shared where the layout keeps them."""
    model = merged(nnx.merge(graphdef, state))  # the decoding copy decodes the adapted policy
    graphdef, state = nnx.split(model)
    dtype = jnp.dtype(model.config.dtype)
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    copy = nnx.merge(graphdef, jax.tree.map(cast, state))
    if layout.per_layer:
        copy = split_layers(copy)
    if layout.float32_lookup:
        copy = float32_lookup(copy, model.embed[...])
    if layout.heads_major:
        copy = heads_major(copy)
    return nnx.split(copy)


# -- the layouts -------------------------------------------------------------------------------------
M = TypeVar("M", bound=nnx.Module)


def _as(cls: type[M], module: nnx.Module) -> M:
    """``module`` made an instance of ``cls``, a subclass that holds the same parameters and only
    computes with them differently; its graphdef then names ``cls``, so merged copies are ``cls`` too."""
    object.__setattr__(module, "__class__", cls)
    return module


class PerLayerLM(CausalLM):
    """`CausalLM` whose ``layers`` are an ``nnx.List`` of blocks, run unrolled (decoding: no backward)."""

    def run_layers(self, x: jax.Array, cos: jax.Array, sin: jax.Array, attend, state: Any,
                   remat: bool = False) -> tuple[jax.Array, Any]:
        for layer, block in enumerate(self.layers):
            x, state = block(x, cos, sin, attend, state, layer, self.mesh)
        return x, state


class HeadsMajorAttention(Attention):
    """`Attention` with its q/k/v kernels stored [heads, embed, D]."""

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        y = self.einsum("btd,hdk->bthk", x, getattr(self, f"{name}_kernel")[...].astype(self.dtype))
        return y + getattr(self, f"{name}_bias")[...].astype(self.dtype) if self.qkv_bias else y


def split_layers(model: CausalLM) -> PerLayerLM:
    """``model`` (changed in place) with one block per layer."""
    graphdef, stacked = nnx.split(model.layers)

    def block(i: int) -> nnx.Module:
        def take(v):
            axes = v.get_metadata().get("logical_axes")
            return v.replace(value=v.get_value()[i], logical_axes=axes[1:] if axes else axes)

        return nnx.merge(graphdef, jax.tree.map(take, stacked, is_leaf=lambda v: isinstance(v, nnx.Variable)))

    model.layers = nnx.List([block(i) for i in range(model.config.num_layers)])
    return _as(PerLayerLM, model)


def heads_major(model: CausalLM) -> CausalLM:
    """``model`` (changed in place) with its stacked q/k/v kernels stored [layers, heads, embed, D]."""
    attention = model.layers.attention
    for name in ("q_kernel", "k_kernel", "v_kernel"):
        v = getattr(attention, name)
        axes = v.get_metadata()["logical_axes"]
        setattr(attention, name, v.replace(value=jnp.swapaxes(v.get_value(), 1, 2),
                                           logical_axes=(axes[0], axes[2], axes[1], axes[3])))
    _as(HeadsMajorAttention, attention)
    return model


def float32_lookup(model: CausalLM, table: jax.Array) -> CausalLM:
    """``model`` (changed in place) gathering embedding rows from the float32 of ``table`` and projecting
    logits with a separate [D, V] head in the compute dtype."""
    dtype = jnp.dtype(model.config.dtype)
    if model.config.tie_word_embeddings:
        model.lm_head = nnx.Param(table.T.astype(dtype), logical_axes=("embed", "vocab"))
        model.config = model.config.replace(tie_word_embeddings=False)
    model.embed = nnx.Param(table.astype(jnp.float32), logical_axes=("vocab", "embed"))
    return model


__all__ = ["DecodeLayout", "LAYER_LAYOUTS", "PER_LAYER_MIN_KERNEL_BYTES", "prefill_attention", "kv_writes",
           "kv_pool", "decoding_copy",
           "heads_major", "float32_lookup", "PerLayerLM", "HeadsMajorAttention"]
