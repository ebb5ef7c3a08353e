"""A prefill chunk's attention as one fused kernel a layer: on a GPU a block-sparse flash attention in Pallas
(Triton), on a TPU Pallas splash attention.

The portable path (`tooln1.models.attention`, blockwise) runs a chunk over its context and itself as a
sequential loop of one ``lax.cond`` per pair of blocks: 1,440 loop steps a layer at an 8,192-token chunk
over 3.2k context slots in blocks of 256, each a few small kernels on a GPU. Here one kernel call does
the layer.

* `chunk_attention` (GPU): its grid runs every (query block, shard, query head) at once, and each program
  loops only over the key blocks its queries can see, listed beforehand (`visible_blocks`), so a packed
  chunk skips other prompts' context and the causally hidden blocks as the blockwise path does, without
  a loop in the program. Masks are the portable path's, as data: a query sees a key when their segment
  ids are equal and non-zero and the key's position is not after the query's.
* `splash_chunk_attention` (TPU): the prefill's layout (keys [context; chunk], the chunk's positions its
  index) as a static causal mask shifted by the context's length, and the segment ids as data.

A query that sees nothing gets zeros in both. Forward only (the engine's prefill; training keeps the
blockwise path, which has a backward). The engine selects them through `tooln1.platform.decode_layout`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.sharding import Mesh, PartitionSpec

from tooln1.sharding import batch_axes, logical_to_spec

MASKED = -1e30  # finite: a row that has seen no key keeps it as its max and subtracts 0 instead (exp -> 0)
BLOCK_Q = 64
BLOCK_K = 64


def kernel_fits(head_dim: int, dtype) -> bool:
    """Whether the kernel takes these inputs: 16-bit (in float32 Triton's dots run TF32 and would lose
    float32 parity with the portable path) and a power-of-two head size (Triton's tile shapes)."""
    return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim >= 16 and head_dim & (head_dim - 1) == 0


def _ranges(seg: jax.Array, pos: jax.Array, size: int):
    """Per block of ``size`` tokens of [B, N] segments and positions: the least and greatest non-zero
    segment (an empty range where there is none) and the least and greatest position among those."""
    b, n = seg.shape
    seg, pos = seg.reshape(b, n // size, size), pos.reshape(b, n // size, size)
    real = seg != 0
    big = jnp.iinfo(jnp.int32).max
    return (jnp.where(real, seg, big).min(-1), jnp.where(real, seg, 0).max(-1),
            jnp.where(real, pos, big).min(-1), jnp.where(real, pos, -big).max(-1))


def visible_blocks(q_seg, kv_seg, q_pos, kv_pos, block_q: int, block_k: int) -> jax.Array:
    """[B, nq, 1 + nk] int32: for each query block, how many key blocks any of its queries may see, then
    those blocks' indices in order (the rest padding). A superset of the exact set (segment ranges that
    overlap, a key block's first position not after the query block's last) and the kernel masks each
    score, so it is exact; for a chunk's contiguous prompts it is the set of blocks holding a visible key."""
    q_lo, q_hi, _, q_last = _ranges(q_seg, q_pos, block_q)
    k_lo, k_hi, k_first, _ = _ranges(kv_seg, kv_pos, block_k)
    seen = ((q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
            & (k_first[:, None, :] <= q_last[:, :, None]))
    order = jnp.argsort(~seen, axis=-1, stable=True).astype(jnp.int32)  # seen blocks first, in order
    return jnp.concatenate([seen.sum(-1, dtype=jnp.int32)[..., None], order], axis=-1)


def _kernel(plan_ref, q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, q_pos_ref, kv_pos_ref, o_ref, *,
            block_k: int, scale: float):
    """One (query block, shard, head): online softmax over the key blocks ``plan_ref`` lists."""
    q = q_ref[...]
    q_seg, q_pos = q_seg_ref[...], q_pos_ref[...]
    rows, dim = q.shape

    def body(j, carry):
        m, denom, acc = carry
        keys = pl.ds(pl.multiple_of(plan_ref[1 + j] * block_k, block_k), block_k)
        s = jax.lax.dot_general(q, k_ref[keys, :], (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32) * scale
        see = ((q_seg[:, None] == kv_seg_ref[keys][None, :]) & (q_seg[:, None] != 0)
               & (kv_pos_ref[keys][None, :] <= q_pos[:, None]))
        s = jnp.where(see, s, MASKED)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - jnp.where(m_new > MASKED, m_new, 0.0)[:, None])
        correction = jnp.exp(m - m_new)
        pv = jax.lax.dot_general(p.astype(v_ref.dtype), v_ref[keys, :], (((1,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32)
        return m_new, denom * correction + p.sum(-1), acc * correction[:, None] + pv

    init = (jnp.full((rows,), MASKED, jnp.float32), jnp.zeros((rows,), jnp.float32),
            jnp.zeros((rows, dim), jnp.float32))
    _, denom, acc = jax.lax.fori_loop(0, plan_ref[0], body, init)
    o_ref[...] = (acc / jnp.where(denom > 0, denom, 1.0)[:, None]).astype(o_ref.dtype)


def _pad(x: jax.Array, size: int, value=0) -> jax.Array:
    return jnp.pad(x, [(0, 0), (0, -x.shape[1] % size)] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def _one_shard(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, block_q: int, block_k: int, interpret: bool):
    b, t, heads, dim = q.shape
    groups = heads // k.shape[2]
    q, q_seg, q_pos = _pad(q, block_q), _pad(q_seg, block_q), _pad(q_pos, block_q)  # padding: segment 0
    k, v, kv_seg, kv_pos = _pad(k, block_k), _pad(v, block_k), _pad(kv_seg, block_k), _pad(kv_pos, block_k)
    plan = visible_blocks(q_seg, kv_seg, q_pos, kv_pos, block_q, block_k)
    s, nq = k.shape[1], q.shape[1] // block_q
    compiler_params = None if interpret else _triton_params(dim)
    out = pl.pallas_call(
        functools.partial(_kernel, block_k=block_k, scale=dim ** -0.5),
        grid=(nq, b, heads),
        in_specs=[
            pl.BlockSpec((None, None, plan.shape[-1]), lambda i, j, h: (j, i, 0)),
            pl.BlockSpec((None, block_q, None, dim), lambda i, j, h: (j, i, h, 0)),
            pl.BlockSpec((None, s, None, dim), lambda i, j, h: (j, 0, h // groups, 0)),
            pl.BlockSpec((None, s, None, dim), lambda i, j, h: (j, 0, h // groups, 0)),
            pl.BlockSpec((None, block_q), lambda i, j, h: (j, i)),
            pl.BlockSpec((None, s), lambda i, j, h: (j, 0)),
            pl.BlockSpec((None, block_q), lambda i, j, h: (j, i)),
            pl.BlockSpec((None, s), lambda i, j, h: (j, 0)),
        ],
        out_specs=pl.BlockSpec((None, block_q, None, dim), lambda i, j, h: (j, i, h, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=compiler_params,
        interpret=interpret,
        name="chunk_attention",
    )(plan, q, k, v, q_seg, kv_seg, q_pos, kv_pos)
    return out[:, :t]


def _triton_params(head_dim: int):
    from jax.experimental.pallas import triton as plgpu

    return plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)


def chunk_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                    q_positions: jax.Array, kv_positions: jax.Array, *, mesh: Mesh | None = None,
                    block_q: int = BLOCK_Q, block_k: int = BLOCK_K, interpret: bool = False) -> jax.Array:
    """`tooln1.models.attention.attention` (causal, explicit positions) as one Pallas kernel: q [B, T, heads,
    D] over k, v [B, S, kv_heads, D], segment ids and positions [B, T] / [B, S] int32. Returns [B, T, heads,
    D] in q's dtype. With a ``mesh`` it runs per device (`_per_device`);
    ``interpret`` runs it in Pallas' interpreter (any backend: the tests' CPU)."""
    fn = functools.partial(_one_shard, block_q=block_q, block_k=block_k, interpret=interpret)
    ints = (jnp.asarray(x, jnp.int32) for x in (q_segment_ids, kv_segment_ids, q_positions, kv_positions))
    return _per_device(fn, mesh, q, k, v, *ints)


def _per_device(fn, mesh: Mesh | None, q, k, v, *masks):
    """``fn`` on each device's batch shard and, where the tensor axis splits the kv heads, its heads (query
    heads follow their kv heads): XLA cannot partition a custom call, and replicated heads would gather
    q, k and v whole on every device of the tensor axis."""
    if mesh is None:
        return fn(q, k, v, *masks)
    shards = batch_axes(mesh) or None
    heads = logical_to_spec(("kv_heads",), k.shape[2:3], mesh)[0]
    qkv, rows = PartitionSpec(shards, None, heads), PartitionSpec(shards)
    return jax.shard_map(fn, mesh=mesh, in_specs=(qkv,) * 3 + (rows,) * len(masks), out_specs=qkv,
                         check_vma=False)(q, k, v, *masks)


def _splash_blocks(n: int) -> int:
    return next(b for b in (512, 256, 128) if n % b == 0)


def _splash_one_shard(q, k, v, q_seg, kv_seg, *, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    b, t, heads, dim = q.shape
    kvh = k.shape[2]
    ctx = k.shape[1] - t
    # Splash tiles both lengths in blocks of 128 or more: pad the chunk (queries and its keys alike) and the
    # context each to a multiple of 128, padding in segment 0, which no real query sees
    t_pad, ctx_pad = -t % 128, -ctx % 128
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    split = lambda x: (pad(x[:, :ctx], ctx_pad), pad(x[:, ctx:], t_pad))  # noqa: E731
    k, v, kv_seg = (jnp.concatenate(split(x), axis=1) for x in (k, v, kv_seg))
    q, q_seg = pad(q, t_pad), pad(q_seg, t_pad)
    tq, s = q.shape[1], k.shape[1]
    bq, bkv = _splash_blocks(tq), _splash_blocks(math.gcd(tq, ctx + ctx_pad) or tq)
    blocks = kernel.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv)
    causal = masks.CausalMask((tq, s), offset=ctx + ctx_pad)  # every context slot, then the chunk causally
    mqa = kernel.make_splash_mqa_single_device(masks.MultiHeadMask([causal] * (heads // kvh)), block_sizes=blocks,
                                               interpret=interpret)
    qg = (q.reshape(b, tq, kvh, heads // kvh, dim) * dim ** -0.5).astype(q.dtype)  # splash does not scale

    def one_row(qr, kr, vr, qs, ks):  # per kv head: q [G, T, D], k and v [S, D]
        segments = kernel.SegmentIds(q=qs, kv=ks)
        out = jax.vmap(lambda qh, kh, vh: mqa(qh, kh, vh, segments))(
            qr.transpose(1, 2, 0, 3), kr.swapaxes(0, 1), vr.swapaxes(0, 1))  # [KV, G, T, D]
        return out.transpose(2, 0, 1, 3).reshape(tq, heads, dim)

    out = jax.vmap(one_row)(qg, k, v, q_seg, kv_seg)[:, :t]
    return jnp.where(q_seg[:, :t, None, None] != 0, out, 0).astype(q.dtype)  # padding queries: zeros


def splash_chunk_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                           kv_segment_ids: jax.Array, *, mesh: Mesh | None = None, interpret: bool = False
                           ) -> jax.Array:
    """The prefill's attention as Pallas splash attention (TPU): q [B, T, heads, D] over k, v [B, S, kv_heads,
    D] laid out as the prefill builds them, ``S - T`` context slots (before every query) then the chunk's
    own T keys (causal by index); segment ids [B, T] / [B, S] (0: nothing). Splash skips only the blocks
    its static mask hides (the chunk's upper triangle), not other prompts' blocks, whose scores it masks."""
    fn = functools.partial(_splash_one_shard, interpret=interpret)
    return _per_device(fn, mesh, q, k, v, jnp.asarray(q_segment_ids, jnp.int32), jnp.asarray(kv_segment_ids, jnp.int32))


__all__ = ["chunk_attention", "splash_chunk_attention", "kernel_fits", "visible_blocks", "BLOCK_Q", "BLOCK_K"]
