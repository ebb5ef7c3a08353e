"""Qwen2-family causal decoder (Qwen2 and Llama-3 blocks) as a Flax NNX module.

One code path serves the full forward (training, log-probs) and the rollout engine's decoding: every
block runs the same projections and MLP, and only its ``attend`` callback differs — over the sequence
itself for the full forward, over KV pages for the engine (`tooln1.rollout.programs`). How a platform
lays out the engine's copy of the weights is `tooln1.platform.decode_layout`'s business, not this module's.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from tooln1.checkpoints.hf_export import save_pretrained
from tooln1.models import lora
from tooln1.models.attention import attention, merge_partial
from tooln1.models.config import ModelConfig
from tooln1.models.lora import adapted
from tooln1.models.quantize import dense_kernel
from tooln1.platform.matmul import Einsum, einsum_for
from tooln1.sharding import constrain


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions of a left-padded batch: 0 at the first real token (what HF generate uses)."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies in float32, with optional llama3-style scaling."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
    if config.rope_llama3_scaling is None:
        return inv_freq
    factor, low, high, original = config.rope_llama3_scaling
    low_wavelen, high_wavelen = original / low, original / high
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE (the HF convention); x [B, T, H, D], cos/sin [B, T, D]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def _param(rngs: nnx.Rngs | None, shape, dtype, axes, init: str = "normal", layers: int | None = None) -> nnx.Param:
    """A parameter annotated with logical axes; ``layers`` stacks one per layer on a leading axis."""
    if layers is not None:
        shape, axes = (layers, *shape), ("layers", *axes)
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros" or rngs is None:
        value = jnp.zeros(shape, dtype)
    else:
        value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype, layers: int | None = None):
        self.weight = _param(None, (dim,), param_dtype, ("norm",), init="ones", layers=layers)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * y.astype(x.dtype)


class Attention(nnx.Module):
    """GQA self-attention with optional q/k/v bias and no output bias."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, einsum: Einsum, layers: int | None = None):
        c, pd = config, jnp.dtype(config.param_dtype)
        param = functools.partial(_param, dtype=pd, layers=layers)
        self.q_kernel = param(rngs, (c.hidden_size, c.num_heads, c.head_dim), axes=("embed", "heads", "head_dim"))
        self.k_kernel = param(rngs, (c.hidden_size, c.num_kv_heads, c.head_dim), axes=("embed", "kv_heads", "head_dim"))
        self.v_kernel = param(rngs, (c.hidden_size, c.num_kv_heads, c.head_dim), axes=("embed", "kv_heads", "head_dim"))
        self.o_kernel = param(rngs, (c.num_heads, c.head_dim, c.hidden_size), axes=("heads", "head_dim", "embed"))
        if c.qkv_bias:
            self.q_bias = param(None, (c.num_heads, c.head_dim), axes=("heads", "head_dim"))
            self.k_bias = param(None, (c.num_kv_heads, c.head_dim), axes=("kv_heads", "head_dim"))
            self.v_bias = param(None, (c.num_kv_heads, c.head_dim), axes=("kv_heads", "head_dim"))
        self.qkv_bias = c.qkv_bias
        self.dtype = jnp.dtype(c.dtype)
        self.einsum = einsum

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        y = adapted(self, name, x, self.einsum("btd,dhk->bthk", x, dense_kernel(self, name, self.dtype)))
        return y + getattr(self, f"{name}_bias")[...].astype(self.dtype) if self.qkv_bias else y

    def qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mesh: Mesh | None):
        """Rotated queries [B, T, heads, D] and keys, plus values [B, T, kv_heads, D]."""
        q = _rotate(self._project(x, "q"), cos, sin)
        k = _rotate(self._project(x, "k"), cos, sin)
        v = self._project(x, "v")
        return constrain(q, ("batch", "length", "heads", "head_dim"), mesh), k, v

    def output(self, attended: jax.Array) -> jax.Array:
        """Output projection of the attended values [B, T, heads, D]."""
        y = self.einsum("bthk,hkd->btd", attended, dense_kernel(self, "o", self.dtype))
        return adapted(self, "o", attended, y)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """``silu(gate) * up`` whose backward keeps only its two inputs: autodiff kept sigmoid(gate), silu(gate)
    and the product as well, five [tokens, intermediate] arrays a layer where two do."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_bwd(residuals, d_out):
    gate, up = residuals
    sig = jax.nn.sigmoid(gate)
    silu = gate * sig
    return d_out * up * (sig + silu * (1 - sig)), d_out * silu


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, einsum: Einsum, layers: int | None = None):
        c, pd = config, jnp.dtype(config.param_dtype)
        self.gate_kernel = _param(rngs, (c.hidden_size, c.intermediate_size), pd, ("embed", "mlp"), layers=layers)
        self.up_kernel = _param(rngs, (c.hidden_size, c.intermediate_size), pd, ("embed", "mlp"), layers=layers)
        self.down_kernel = _param(rngs, (c.intermediate_size, c.hidden_size), pd, ("mlp", "embed"), layers=layers)
        self.dtype = jnp.dtype(c.dtype)
        self.einsum = einsum

    def _matmul(self, rows: jax.Array, name: str) -> jax.Array:
        """``rows`` [N, in] times the kernel ``name`` [in, out]."""
        return adapted(self, name, rows, self.einsum("ri,io->ro", rows, dense_kernel(self, name, self.dtype)))

    def __call__(self, x: jax.Array, mesh: Mesh | None) -> jax.Array:
        # The matmuls see [B*T, D] rows: with [B, T, D] operands XLA:CPU transposes the weight
        # gradients through copies; "length" is never sharded.
        b, t, d = x.shape
        rows = x.reshape(b * t, d)
        gate = self._matmul(rows, "gate").reshape(b, t, -1)
        up = self._matmul(rows, "up").reshape(b, t, -1)
        hidden = constrain(swiglu(gate, up), ("batch", "length", "mlp"), mesh)
        return self._matmul(hidden.reshape(b * t, -1), "down").reshape(b, t, d)


class Block(nnx.Module):
    """A pre-norm decoder block; built with ``layers=L`` it holds all L blocks' parameters stacked on
    a leading axis, and a slice of them along that axis is one block again."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, einsum: Einsum, layers: int | None = None):
        pd = jnp.dtype(config.param_dtype)
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd, layers)
        self.attention = Attention(config, rngs, einsum, layers)
        self.post_attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd, layers)
        self.mlp = MLP(config, rngs, einsum, layers)

    def __call__(self, x, cos, sin, attend: Attend, state: Any, layer, mesh: Mesh | None):
        """One pre-norm block. ``attend(q, k, v, state, layer) -> (attended, state)`` is the only thing
        that differs between the full forward and decoding over KV pages; ``state`` (the pages, or
        None) is threaded through every layer and updated in place at ``layer``."""
        # named scopes label each part's ops in compiled programs and profiles (tools/bench/op_profile.py)
        with jax.named_scope("qkv"):
            q, k, v = self.attention.qkv(self.input_norm(x), cos, sin, mesh)
        with jax.named_scope("attend"):
            attended, state = attend(q, k, v, state, layer)
        with jax.named_scope("attention_out"):
            x = constrain(x + self.attention.output(attended), ("batch", "length", None), mesh)
        with jax.named_scope("mlp"):
            x = constrain(x + self.mlp(self.post_attention_norm(x), mesh), ("batch", "length", None), mesh)
        return x, state


Attend = Callable[[jax.Array, jax.Array, jax.Array, Any, Any], tuple[jax.Array, Any]]


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


@functools.partial(jax.jit, static_argnums=0)
def _jitted_logits(graphdef, state, input_ids, attention_mask, positions):
    model = nnx.merge(graphdef, state)
    return model.logits_from_hidden(model.hidden_states(input_ids, attention_mask, positions))


class CausalLM(nnx.Module):
    """Decoder-only LM. ``mesh`` (static) enables activation sharding constraints; the weight matmuls
    run the einsum of the mesh's platform (`tooln1.platform.matmul`)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, mesh: Mesh | None = None):
        c, pd = config, jnp.dtype(config.param_dtype)
        self.config = config
        self.mesh = mesh
        self.embed = _param(rngs, (c.vocab_size, c.hidden_size), pd, ("vocab", "embed"))
        # stacked: [num_layers, ...] per parameter
        self.layers = Block(c, rngs, einsum_for(c.dtype, mesh), layers=c.num_layers)
        if c.lora_rank:
            lora.attach(self.layers, c, rngs, pd)
        self.final_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, pd)
        if not c.tie_word_embeddings:
            self.lm_head = _param(rngs, (c.hidden_size, c.vocab_size), pd, ("embed", "vocab"))
        self.source_dir: str | None = None  # HF directory it was loaded from (tokenizer files for export)
        self.hf_config_json: str | None = None  # its config.json, re-emitted on export

    # -- public API -------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, positions=None) -> jax.Array:
        """Logits [B, T, V] (float32) of a left-padded batch, computed by one compiled program."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        positions = default_positions(mask) if positions is None else jnp.asarray(positions, jnp.int32)
        graphdef, state = nnx.split(self)
        return _jitted_logits(graphdef, state, input_ids, mask, positions)

    def hidden_states(self, input_ids, attention_mask=None, positions=None, shared_prefix: int = 0,
                      segments=None) -> jax.Array:
        """Final-normed hidden states [B, T, D]: lets callers compute log-probs in chunks.

        ``shared_prefix`` P > 0 packs continuations of one prefix after it, ``[prefix (P), c_1, c_2,
        ...]``, told apart by ``segments`` [B, T - P] (continuation id >= 1 per token, 0 = padding;
        each continuation contiguous): a continuation token sees the prefix and its own earlier
        tokens only. A GRPO group then runs its prompt through the model once, and attention costs
        P² + C·P + Σ c_j² for C continuation tokens — never more than the rows of P + c_j it replaces.
        Pass each continuation's ``positions`` as if it followed the prefix alone.
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        positions = default_positions(mask) if positions is None else jnp.asarray(positions, jnp.int32)
        attend_kw = self.attention_options()
        p = shared_prefix
        if p:
            segments = jnp.asarray(segments, jnp.int32)
            if segments.shape != (mask.shape[0], mask.shape[1] - p):
                raise ValueError(f"hidden_states: segments {segments.shape} do not cover the {mask.shape[1] - p} "
                                 "tokens after the prefix")
            prefix_mask, seen = mask[:, :p], (segments > 0).astype(jnp.int32)

            def attend(q, k, v, state, layer):
                prefix = attention(q[:, :p], k[:, :p], v[:, :p], prefix_mask, prefix_mask, **attend_kw)
                cross = attention(q[:, p:], k[:, :p], v[:, :p], seen, prefix_mask, causal=False, return_lse=True,
                                  **attend_kw)
                own = attention(q[:, p:], k[:, p:], v[:, p:], segments, segments, return_lse=True, **attend_kw)
                return jnp.concatenate([prefix, merge_partial([cross, own])], axis=1), state
        else:

            def attend(q, k, v, state, layer):
                return attention(q, k, v, mask, mask, **attend_kw), state

        x, _ = self.run_layers(self.embed_tokens(input_ids), *self.rope(positions), attend, None,
                               remat=self.config.remat)
        return self.final_norm(x)

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        dtype = jnp.dtype(self.config.dtype)
        if self.config.tie_word_embeddings:
            return jnp.einsum("btd,vd->btv", hidden, self._embedding().astype(dtype),
                              preferred_element_type=jnp.float32)
        return jnp.einsum("btd,dv->btv", hidden, self.lm_head[...].astype(dtype), preferred_element_type=jnp.float32)

    def save_pretrained(self, out_dir: str, **kwargs: Any) -> None:
        """Write an HF checkpoint directory (see `tooln1.checkpoints.hf_export.save_pretrained`); adapters
        are merged into their kernels, so transformers loads it as a plain model."""
        save_pretrained(lora.merged(self), out_dir, **kwargs)

    # -- the pieces every forward is made of (the rollout engine composes them too) -------------
    def attention_options(self) -> dict[str, Any]:
        """Keyword arguments of `tooln1.models.attention.attention` for this model's config and mesh."""
        return dict(implementation=self.config.attention, block_size=self.config.attention_block_size, mesh=self.mesh)

    def _embedding(self) -> jax.Array:
        """The embedding table; constant (no gradient) when ``config.frozen_layers`` freezes it."""
        table = self.embed[...]
        return jax.lax.stop_gradient(table) if self.config.frozen_layers else table

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        x = jnp.take(self._embedding(), input_ids, axis=0).astype(jnp.dtype(self.config.dtype))
        return constrain(x, ("batch", "length", None), self.mesh)

    def rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """cos, sin [B, T, head_dim] of integer ``positions`` [B, T], in the compute dtype."""
        dtype = jnp.dtype(self.config.dtype)
        angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inverse_frequencies(self.config))
        angles = jnp.concatenate([angles, angles], axis=-1)
        return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)

    def run_layers(self, x: jax.Array, cos: jax.Array, sin: jax.Array, attend: Attend, state: Any,
                   remat: bool = False) -> tuple[jax.Array, Any]:
        """All blocks over ``x`` [B, T, D] (not final-normed), threading ``state`` through ``attend``.

        The stacked layers run under one ``jax.lax.scan``, so the program holds one block however
        deep the model is (``config.scan_layers=False`` unrolls it, for debugging); ``layer`` is
        then a traced index. ``remat`` recomputes each block in the backward pass, keeping what
        ``config.remat_policy`` names. With ``config.frozen_layers`` F the lowest F blocks run as a
        scan of their own under ``stop_gradient``.
        """
        mesh = self.mesh
        graphdef, params = nnx.split(self.layers)

        def body(carry, per_layer):
            x, state = carry
            layer_params, layer = per_layer
            x, state = nnx.merge(graphdef, layer_params)(x, cos, sin, attend, state, layer, mesh)
            return (x, state), None

        if remat:
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.config.remat_policy], prevent_cse=False)

        def run(carry, params, first):
            count = jax.tree.leaves(params)[0].shape[0]
            if self.config.scan_layers:
                carry, _ = jax.lax.scan(body, carry, (params, jnp.arange(first, first + count, dtype=jnp.int32)))
                return carry
            for i in range(count):
                carry, _ = body(carry, (jax.tree.map(lambda a, i=i: a[i], params), first + i))
            return carry

        frozen = self.config.frozen_layers
        if frozen:  # no gradient reaches the lowest blocks, so autodiff never runs backward through them
            x, state = run((x, state), jax.tree.map(lambda a: jax.lax.stop_gradient(a[:frozen]), params), 0)
            x = jax.lax.stop_gradient(x)
            params = jax.tree.map(lambda a: a[frozen:], params)
        return run((x, state), params, frozen)


def count_params(config: ModelConfig) -> int:
    """Number of parameters, for MFU estimates and sanity checks."""
    c = config
    attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    bias = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim if c.qkv_bias else 0
    mlp = 3 * c.hidden_size * c.intermediate_size
    per_layer = attn + bias + mlp + 2 * c.hidden_size
    head = 0 if c.tie_word_embeddings else c.hidden_size * c.vocab_size
    return c.vocab_size * c.hidden_size + c.num_layers * per_layer + c.hidden_size + head
