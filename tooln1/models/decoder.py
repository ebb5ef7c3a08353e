"""Qwen2-family causal decoder (Qwen2 and Llama-3 blocks) as a Flax NNX module.

One code path serves the full forward (training, log-probs) and the rollout engine's decoding: every
block runs the same projections and MLP, and only its ``attend`` callback differs — over the sequence
itself for the full forward, over KV pages for the engine (`tooln1.rollout.programs`).
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
from tooln1.models.attention import attention, merge_partial
from tooln1.models.config import ModelConfig
from tooln1.sharding import constrain, platform


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


def _contract(spec: str, x: jax.Array, w: jax.Array, dtype, mesh: Mesh | None) -> jax.Array:
    """``einsum`` in the compute dtype. On a CPU a 16-bit one asks for a float32 product and casts it:
    XLA:CPU runs bf16 x bf16 -> f32 on the CPU's bf16 units (AMX / AVX512-BF16: 2-5x a float32 matmul
    at 2-512 rows) but bf16 -> bf16 on a slow path (10x slower). TPUs and GPUs keep bf16 products:
    float32 ones pushed the 7B TPU update past 32 GiB."""
    if jnp.dtype(dtype).itemsize == 4 or platform(mesh) != "cpu":
        return jnp.einsum(spec, x, w)
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(dtype)


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

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, layers: int | None = None):
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
        self.heads_major = False  # q/k/v kernels stored [heads, embed, D] (the TPU decoding copy, `heads_major`)

    def _project(self, x, kernel, bias, mesh):
        spec = "btd,hdk->bthk" if self.heads_major else "btd,dhk->bthk"
        y = _contract(spec, x, kernel[...].astype(self.dtype), self.dtype, mesh)
        return y + bias[...].astype(self.dtype) if self.qkv_bias else y

    def qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mesh: Mesh | None):
        """Rotated queries [B, T, heads, D] and keys, plus values [B, T, kv_heads, D]."""
        q = _rotate(self._project(x, self.q_kernel, getattr(self, "q_bias", None), mesh), cos, sin)
        k = _rotate(self._project(x, self.k_kernel, getattr(self, "k_bias", None), mesh), cos, sin)
        v = self._project(x, self.v_kernel, getattr(self, "v_bias", None), mesh)
        return constrain(q, ("batch", "length", "heads", "head_dim"), mesh), k, v

    def output(self, attended: jax.Array, mesh: Mesh | None) -> jax.Array:
        """Output projection of the attended values [B, T, heads, D]."""
        return _contract("bthk,hkd->btd", attended, self.o_kernel[...].astype(self.dtype), self.dtype, mesh)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """``silu(gate) * up`` whose backward keeps only its two inputs: autodiff kept sigmoid(gate), silu(gate)
    and the product as well, five [tokens, intermediate] arrays a layer where two do (Qwen2.5-0.5B packed
    update: 2.1 of its 5.5 GiB temp were these)."""
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

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, layers: int | None = None):
        c, pd = config, jnp.dtype(config.param_dtype)
        self.gate_kernel = _param(rngs, (c.hidden_size, c.intermediate_size), pd, ("embed", "mlp"), layers=layers)
        self.up_kernel = _param(rngs, (c.hidden_size, c.intermediate_size), pd, ("embed", "mlp"), layers=layers)
        self.down_kernel = _param(rngs, (c.intermediate_size, c.hidden_size), pd, ("mlp", "embed"), layers=layers)
        self.dtype = jnp.dtype(c.dtype)
        self.out_major = False  # kernels stored [out, in] (the decoding copy, `split_layers`)

    def _matmul(self, rows: jax.Array, kernel: nnx.Param, mesh: Mesh | None) -> jax.Array:
        w = kernel[...].astype(self.dtype)
        # out-major as (w @ rows.T).T: XLA:CPU's rows @ w.T takes a slow path for one row (7x slower)
        return (_contract("oi,ri->or", w, rows, self.dtype, mesh).T if self.out_major
                else _contract("ri,io->ro", rows, w, self.dtype, mesh))

    def __call__(self, x: jax.Array, mesh: Mesh | None) -> jax.Array:
        # The matmuls see [B*T, D] rows: with [B, T, D] operands XLA:CPU transposes the weight
        # gradients through copies (a block's backward 1.5x slower); "length" is never sharded.
        b, t, d = x.shape
        rows = x.reshape(b * t, d)
        gate = self._matmul(rows, self.gate_kernel, mesh).reshape(b, t, -1)
        up = self._matmul(rows, self.up_kernel, mesh).reshape(b, t, -1)
        hidden = constrain(swiglu(gate, up), ("batch", "length", "mlp"), mesh)
        return self._matmul(hidden.reshape(b * t, -1), self.down_kernel, mesh).reshape(b, t, d)


class Block(nnx.Module):
    """A pre-norm decoder block; built with ``layers=L`` it holds all L blocks' parameters stacked on
    a leading axis, and a slice of them along that axis is one block again."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, layers: int | None = None):
        pd = jnp.dtype(config.param_dtype)
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd, layers)
        self.attention = Attention(config, rngs, layers)
        self.post_attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd, layers)
        self.mlp = MLP(config, rngs, layers)

    def __call__(self, x, cos, sin, attend: "Attend", state: Any, layer, mesh: Mesh | None):
        """One pre-norm block. ``attend(q, k, v, state, layer) -> (attended, state)`` is the only thing
        that differs between the full forward and decoding over KV pages; ``state`` (the pages, or
        None) is threaded through every layer and updated in place at ``layer``."""
        q, k, v = self.attention.qkv(self.input_norm(x), cos, sin, mesh)
        attended, state = attend(q, k, v, state, layer)
        x = constrain(x + self.attention.output(attended, mesh), ("batch", "length", None), mesh)
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
    """Decoder-only LM. ``mesh`` (static) enables activation sharding constraints."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, mesh: Mesh | None = None):
        c, pd = config, jnp.dtype(config.param_dtype)
        self.config = config
        self.mesh = mesh
        self.embed = _param(rngs, (c.vocab_size, c.hidden_size), pd, ("vocab", "embed"))
        self.layers = Block(c, rngs, layers=c.num_layers)  # stacked: [num_layers, ...] per parameter
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
        """Write an HF checkpoint directory (see `tooln1.checkpoints.hf_export.save_pretrained`)."""
        save_pretrained(self, out_dir, **kwargs)

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
        if isinstance(self.layers, nnx.List):  # the decoding copy (`split_layers`): unrolled, no backward
            for layer, block in enumerate(self.layers):
                x, state = block(x, cos, sin, attend, state, layer, mesh)
            return x, state
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
                carry, _ = body(carry, (jax.tree.map(lambda a: a[i], params), first + i))
            return carry

        frozen = self.config.frozen_layers
        if frozen:  # no gradient reaches the lowest blocks, so autodiff never runs backward through them
            x, state = run((x, state), jax.tree.map(lambda a: jax.lax.stop_gradient(a[:frozen]), params), 0)
            x = jax.lax.stop_gradient(x)
            params = jax.tree.map(lambda a: a[frozen:], params)
        return run((x, state), params, frozen)


def split_layers(model: CausalLM) -> CausalLM:
    """Replace ``model``'s stacked blocks by one block per layer, MLP kernels stored [out, in]; returns it.

    What small-batch decoding on a CPU reads fastest: under the layer scan XLA:CPU copies each layer's
    weights out of the stack before its matmuls, and an [8, 896] x [896, 4864] matmul streams its
    weights at 11 GB/s stored [in, out] but 17 GB/s stored [out, in] (Qwen2.5-0.5B's MLP at 8 rows:
    130 ms a step scanned, 87 ms split). Training keeps the stacked layout; this is for a copy.
    """
    graphdef, stacked = nnx.split(model.layers)

    def block(i: int) -> Block:
        def take(v):
            axes = v.get_metadata().get("logical_axes")
            return v.replace(value=v.get_value()[i], logical_axes=axes[1:] if axes else axes)

        one = nnx.merge(graphdef, jax.tree.map(take, stacked, is_leaf=lambda v: isinstance(v, nnx.Variable)))
        for name in ("gate_kernel", "up_kernel", "down_kernel"):
            v = getattr(one.mlp, name)
            setattr(one.mlp, name, v.replace(value=v.get_value().T, logical_axes=v.get_metadata()["logical_axes"][::-1]))
        one.mlp.out_major = True
        return one

    model.layers = nnx.List([block(i) for i in range(model.config.num_layers)])
    return model


def heads_major(model: CausalLM) -> CausalLM:
    """Store the stacked q/k/v kernels [layers, heads, embed, D]; returns ``model``. XLA:TPU's decode
    matmuls read them heads-major and copied the [layers, embed, heads, D] stacks into that layout at
    every round (Qwen2.5-14B: 3.3 GiB of temporaries a chip). A decoding copy only."""
    attention = model.layers.attention
    for name in ("q_kernel", "k_kernel", "v_kernel"):
        v = getattr(attention, name)
        axes = v.get_metadata()["logical_axes"]
        setattr(attention, name, v.replace(value=jnp.swapaxes(v.get_value(), 1, 2),
                                           logical_axes=(axes[0], axes[2], axes[1], axes[3])))
    attention.heads_major = True
    return model


def float32_lookup(model: CausalLM, table: jax.Array) -> CausalLM:
    """Gather embedding rows from the float32 ``table`` and project logits with a separate [D, V] head in
    the compute dtype; returns ``model``. For 16-bit decoding on a CPU: XLA:CPU widens a bf16 gather's
    whole table to float32 on every call inside a loop (SmolLM2: ~35 ms a round), and its bf16 matmul
    wants the head [in, out], so a tied [V, D] table was transposed every round. A decoding copy only."""
    dtype = jnp.dtype(model.config.dtype)
    if model.config.tie_word_embeddings:
        model.lm_head = nnx.Param(table.T.astype(dtype), logical_axes=("embed", "vocab"))
        model.config = model.config.replace(tie_word_embeddings=False)
    model.embed = nnx.Param(table.astype(jnp.float32), logical_axes=("vocab", "embed"))
    return model


def count_params(config: ModelConfig) -> int:
    """Number of parameters, for MFU estimates and sanity checks."""
    c = config
    attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    bias = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim if c.qkv_bias else 0
    mlp = 3 * c.hidden_size * c.intermediate_size
    per_layer = attn + bias + mlp + 2 * c.hidden_size
    head = 0 if c.tie_word_embeddings else c.hidden_size * c.vocab_size
    return c.vocab_size * c.hidden_size + c.num_layers * per_layer + c.hidden_size + head
