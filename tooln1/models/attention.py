"""Attention with its mask given as data, one function for every path, memory linear in length.

A query sees a key when both carry the same non-zero segment id (0 marks padding) and, if causal,
the key's order position is at or before the query's. A key may also be shared by several segments: a
negative id is the negated set of the segments 1-31 that see it, bit ``i`` for segment ``i + 1`` (the
engine's prefill lists a prefix-cache page once for all the prompts in a chunk that continue it; the
dense and blockwise paths only). Positions here order tokens for causality
(default: the index in the row); they are not the RoPE positions, which the caller has already
applied. Nothing ever builds a ``[B, T, S]`` mask or ``[B, heads, T, S]`` scores except the dense
reference, so the blockwise, splash and cuDNN paths hold a sequence of 12k tokens.

Implementations:
  dense      the reference: full fp32 scores; what the tests compare everything against.
  blockwise  pure JAX online softmax over query x key blocks, with a custom VJP that recomputes
             each block in the backward pass (FlashAttention-2's algorithm), so forward and
             backward memory are linear in length; blocks that no query can see are skipped.
  splash     Pallas splash attention (TPU), causal by index with segment ids.
  cudnn      ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU). Its masks are causal
             plus per-row lengths, so rows are rolled to put their real tokens first; that is exact
             when each row's real tokens are contiguous (every layout tooln1 builds).
  auto       splash on TPU, cuDNN on GPU, blockwise elsewhere; dense when one block covers it all.
Paths that cannot express a call (explicit positions, log-sum-exp output) fall back to blockwise.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from tooln1.models.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS
from tooln1.sharding import batch_shards, per_batch_shard, platform

SHARED_SEGMENTS = 31  # segments a shared key's negative id can name: the bits of a positive int32
_NEG = -1e30  # finite "minus infinity": exp() underflows to 0 without inf - inf = nan
# The widest block on a CPU (and the longest sequence "auto" runs dense there): narrower blocks skip
# more of a packed group's fully masked blocks and avoid a dense 512 x 512 backward.
CPU_BLOCK = 256


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    *,
    causal: bool = True,
    implementation: str = "auto",
    block_size: int = 512,
    query_block: int | None = None,
    key_block: int | None = None,
    return_lse: bool = False,
    mesh: Mesh | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Softmax attention of ``q`` [B, T, heads, D] over ``k``, ``v`` [B, S, kv_heads, D] (GQA).

    ``*_segment_ids`` [B, T] / [B, S] int (0 = padding); ``*_positions`` (default ``arange``) order
    tokens for the causal rule. Returns [B, T, heads, D] in ``q``'s dtype, and with ``return_lse``
    the per-query log-sum-exp [B, T, heads] (float32) that merges partial attentions exactly
    (`merge_partial`). A query that sees no key gets zeros and a log-sum-exp of about -1e30.
    With a ``mesh``, "auto" picks by the mesh's devices (compile-only TPU devices included) and the
    kernels run per batch shard under ``shard_map``, since XLA cannot partition a custom call.
    On a CPU, blocks are at most ``CPU_BLOCK`` wide. ``query_block``: the blockwise path's query blocks
    (default: ``block_size``'s), narrower where each holds one segment of a packed chunk. ``key_block``: its
    key blocks, not capped on a CPU (a forward pass over a long context: fewer, wider steps; the cap is
    for the backward's blocks).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    b, t, heads, dim = q.shape
    s = k.shape[1]
    if heads % k.shape[2] or k.shape != v.shape or k.shape[0] != b:
        raise ValueError(f"attention: q {q.shape} does not fit k {k.shape} / v {v.shape}")
    explicit_positions = q_positions is not None or kv_positions is not None
    q_positions = _default_positions(q_positions, b, t)
    kv_positions = _default_positions(kv_positions, b, s)
    q_segment_ids = jnp.asarray(q_segment_ids, jnp.int32)
    kv_segment_ids = jnp.asarray(kv_segment_ids, jnp.int32)
    impl = implementation
    target = platform(mesh)
    block = min(block_size, CPU_BLOCK) if target == "cpu" else block_size
    if impl == "auto":
        impl = {"tpu": "splash", "gpu": "cudnn"}.get(target, "blockwise")
        if max(t, s) <= block:
            impl = "dense"
    kernel_ok = not (explicit_positions or return_lse or t != s or b % batch_shards(mesh))
    if impl == "cudnn":  # cuDNN's fused attention takes half-precision inputs only
        kernel_ok = kernel_ok and q.dtype in (jnp.bfloat16, jnp.float16)
    if impl == "splash":  # its blocks tile the sequence: multiples of 128
        kernel_ok = kernel_ok and t % min(block_size, t) == 0 and min(block_size, t) % 128 == 0
    if impl in ("splash", "cudnn") and not kernel_ok:
        impl = "blockwise"
    if impl == "dense":
        out, lse = _dense(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal)
    elif impl == "blockwise":
        bq, bk = min(query_block or block, block, t), min(key_block or block, s)
        out, lse = _blockwise(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal, bq, bk)
    elif impl == "splash":
        return per_batch_shard(functools.partial(_splash, causal=causal, block_size=block_size), mesh,
                                q, k, v, q_segment_ids, kv_segment_ids)
    else:
        return per_batch_shard(functools.partial(_cudnn, causal=causal), mesh, q, k, v, q_segment_ids)
    return (out, lse) if return_lse else out


def merge_partial(parts: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
    """Exact softmax attention over the union of disjoint key sets from each part's (out, lse)."""
    lses = jnp.stack([lse for _, lse in parts])  # [n, B, T, H]
    total = jax.nn.logsumexp(lses, axis=0)
    weights = jnp.exp(lses - total[None])[..., None]
    out = sum(w * o.astype(jnp.float32) for w, (o, _) in zip(weights, parts))
    return out.astype(parts[0][0].dtype)


def _default_positions(positions, b: int, n: int) -> jax.Array:
    if positions is None:
        return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    return jnp.asarray(positions, jnp.int32)


def _visible(q_seg, kv_seg, q_pos, kv_pos, causal: bool) -> jax.Array:
    """[B, T, S] visibility; only ever built for one block (or by the dense reference)."""
    q, k = q_seg[:, :, None], kv_seg[:, None, :]
    shared = (k < 0) & ((jnp.right_shift(-k, jnp.clip(q - 1, 0, SHARED_SEGMENTS)) & 1) == 1)
    vis = ((q == k) | shared) & (q != 0)
    if causal:
        vis &= kv_pos[:, None, :] <= q_pos[:, :, None]
    return vis


def _grouped(q, kv_heads: int):
    b, t, heads, dim = q.shape
    return q.reshape(b, t, kv_heads, heads // kv_heads, dim)


# -- dense reference ---------------------------------------------------------------------------
def _dense(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal):
    b, t, heads, dim = q.shape
    qg = _grouped(q, k.shape[2])
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * (dim**-0.5)
    vis = _visible(q_seg, kv_seg, q_pos, kv_pos, causal)[:, None, None]
    scores = jnp.where(vis, scores, _NEG)
    m = jnp.max(scores, axis=-1, keepdims=True)
    p = jnp.where(vis, jnp.exp(scores - m), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    probs = (p / jnp.where(denom > 0, denom, 1.0)).astype(q.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, heads, dim)
    lse = jnp.where(denom > 0, m + jnp.log(jnp.where(denom > 0, denom, 1.0)), _NEG)[..., 0]  # [B, KV, G, T]
    return out, jnp.moveaxis(lse, -1, 1).reshape(b, t, heads)


# -- blockwise online softmax ----------------------------------------------------------------------
def _pad_to(x, n: int, axis: int, value=0):
    pad = (-x.shape[axis]) % n
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _blocks(x, size: int, axis: int = 1):
    """Split ``axis`` into blocks of ``size`` and move the block index to the front (for scanning)."""
    x = _pad_to(x, size, axis)
    x = x.reshape(*x.shape[:axis], x.shape[axis] // size, size, *x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _unblocks(x, n: int, axis: int = 1):
    """Inverse of `_blocks` (``axis`` as in the unblocked array), cut back to ``n``."""
    x = jnp.moveaxis(x, 0, axis)
    x = x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])
    return jax.lax.slice_in_dim(x, 0, n, axis=axis)


def _blockwise(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal, bq, bk):
    b, t, heads, dim = q.shape
    kvh = k.shape[2]
    # Head-major blocks, [.., KV, G, tokens, D]: each block's scores are then one plain batched
    # matmul per kv head (the token-major layout made XLA transpose every block).
    qb = _blocks(jnp.moveaxis(_grouped(q, kvh), 1, 3), bq, axis=3)  # [nq, B, KV, G, bq, D]
    kb, vb = (_blocks(jnp.moveaxis(x, 1, 2), bk, axis=2) for x in (k, v))  # [nk, B, KV, bk, D]
    masks = (_blocks(q_seg, bq), _blocks(kv_seg, bk), _blocks(q_pos, bq), _blocks(kv_pos, bk))
    # Tie the masks to the queries. Under a scan over layers the masks are loop constants, and
    # scan's loop-invariant hoisting would otherwise split the block loops and precompute every
    # block's visibility for all (query, key) block pairs at once: [T/bq, S/bk, bq, bk] memory.
    qb, masks = jax.lax.optimization_barrier((qb, masks))
    out, lse = _flash(qb, kb, vb, masks, causal)  # [nq, B, KV, G, bq, (D)]
    out = jnp.moveaxis(_unblocks(out, t, axis=3), 3, 1).reshape(b, t, heads, dim)
    lse = jnp.moveaxis(_unblocks(lse, t, axis=3), 3, 1).reshape(b, t, heads)
    return out, lse


def _scores(qi, kj):
    """Scaled scores [B, KV, G, bq, bk] in float32 of head-major blocks."""
    return jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * qi.shape[-1] ** -0.5


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(qb, kb, vb, masks, causal):
    return _flash_forward(qb, kb, vb, masks, causal)


def _flash_forward(qb, kb, vb, masks, causal):
    q_seg, kv_seg, q_pos, kv_pos = masks

    def per_query_block(args):
        qi, seg_i, pos_i = args
        b, kvh, g, bq, d = qi.shape
        init = (jnp.full((b, kvh, g, bq), _NEG, jnp.float32), jnp.zeros((b, kvh, g, bq), jnp.float32),
                jnp.zeros((b, kvh, g, bq, d), jnp.float32))

        def per_key_block(carry, kv):
            kj, vj, seg_j, pos_j = kv
            vis = _visible(seg_i, seg_j, pos_i, pos_j, causal)[:, None, None]

            def update(carry):
                m, denom, acc = carry
                s_masked = jnp.where(vis, _scores(qi, kj), _NEG)
                m_new = jnp.maximum(m, jnp.max(s_masked, axis=-1))
                # No second mask: exp(_NEG - m) is 0 once a row has seen a key, and a row that has not
                # keeps m_new = _NEG, so it subtracts 0 (one pass fewer over the block)
                p = jnp.exp(s_masked - jnp.where(m_new > _NEG, m_new, 0.0)[..., None])
                correction = jnp.exp(m - m_new)
                pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
                return m_new, denom * correction + jnp.sum(p, axis=-1), acc * correction[..., None] + pv

            return jax.lax.cond(jnp.any(vis), update, lambda c: c, carry), None

        (m, denom, acc), _ = jax.lax.scan(per_key_block, init, (kb, vb, kv_seg, kv_pos))
        seen = denom > 0
        out = acc / jnp.where(seen, denom, 1.0)[..., None]
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), _NEG)
        return out.astype(qi.dtype), lse

    return jax.lax.map(per_query_block, (qb, q_seg, q_pos))


def _flash_fwd(qb, kb, vb, masks, causal):
    out, lse = _flash_forward(qb, kb, vb, masks, causal)
    return (out, lse), (qb, kb, vb, masks, out, lse)


def _flash_bwd(causal, residuals, cotangents):
    qb, kb, vb, masks, out, lse = residuals
    d_out, d_lse = cotangents
    q_seg, kv_seg, q_pos, kv_pos = masks
    # delta_i = sum_d dO * O, less dLSE: the softmax backward's row term (dLSE enters as dS += P·dLSE)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - d_lse  # [nq, B, KV, G, bq]
    scale = qb.shape[-1] ** -0.5

    def per_key_block(dq, kv):
        kj, vj, seg_j, pos_j = kv

        def per_query_block(carry, qs):
            dk, dv, dq = carry
            i, qi, doi, lse_i, delta_i, seg_i, pos_i = qs
            vis = _visible(seg_i, seg_j, pos_i, pos_j, causal)[:, None, None]

            def update(carry):
                dk, dv, dq = carry
                p = jnp.where(vis, jnp.exp(_scores(qi, kj) - lse_i[..., None]), 0.0)
                # dK and dV contract over G and the queries: as one [G*bq] axis each is a plain
                # transposed-operand matmul (the 5-d einsums made XLA:CPU copy)
                rows = lambda x: x.reshape(*x.shape[:2], -1, x.shape[-1])  # noqa: E731  [B, KV, G*bq, .]
                dv = dv + jnp.einsum("bkns,bknd->bksd", rows(p), rows(doi), preferred_element_type=jnp.float32)
                dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
                ds = p * (dp - delta_i[..., None]) * scale
                dk = dk + jnp.einsum("bkns,bknd->bksd", rows(ds), rows(qi), preferred_element_type=jnp.float32)
                dqi = jnp.einsum("bkgqs,bksd->bkgqd", ds, kj, preferred_element_type=jnp.float32)
                return dk, dv, dq.at[i].add(dqi)

            return jax.lax.cond(jnp.any(vis), update, lambda c: c, carry), None

        zeros = jnp.zeros(kj.shape, jnp.float32)
        steps = (jnp.arange(qb.shape[0]), qb, d_out, lse, delta, q_seg, q_pos)
        (dk, dv, dq), _ = jax.lax.scan(per_query_block, (zeros, zeros, dq), steps)
        return dq, (dk, dv)

    dq0 = jnp.zeros(qb.shape, jnp.float32)
    dq, (dk, dv) = jax.lax.scan(per_key_block, dq0, (kb, vb, kv_seg, kv_pos))
    no_grad = jax.tree.map(lambda x: jnp.zeros(x.shape, jax.dtypes.float0), masks)
    return dq.astype(qb.dtype), dk.astype(kb.dtype), dv.astype(vb.dtype), no_grad


_flash.defvjp(_flash_fwd, _flash_bwd)


# -- platform kernels ------------------------------------------------------------------------------
def _splash(q, k, v, q_seg, kv_seg, *, causal, block_size, interpret: bool = False):
    """Pallas splash attention (TPU): causal by index plus segment ids, one kv head per kernel call."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    b, t, heads, dim = q.shape
    kvh = k.shape[2]
    groups = heads // kvh
    base = masks.CausalMask((t, t)) if causal else masks.FullMask((t, t))
    n = min(block_size, t)
    blocks = kernel.BlockSizes(block_q=n, block_kv=n, block_kv_compute=n, block_q_dkv=n, block_kv_dkv=n,
                               block_kv_dkv_compute=n, block_q_dq=n, block_kv_dq=n)
    mqa = kernel.make_splash_mqa_single_device(masks.MultiHeadMask([base] * groups), block_sizes=blocks,
                                               interpret=interpret)
    qg = (_grouped(q, kvh) * (dim**-0.5)).astype(q.dtype)  # [B, T, KV, G, D]; splash does not scale

    def one_row(qr, kr, vr, qs, ks):  # per kv head: q [G, T, D], k and v [T, D]
        segments = kernel.SegmentIds(q=qs, kv=ks)
        heads_out = jax.vmap(lambda qh, kh, vh: mqa(qh, kh, vh, segments))(
            qr.transpose(1, 2, 0, 3), kr.swapaxes(0, 1), vr.swapaxes(0, 1))  # [KV, G, T, D]
        return heads_out.transpose(2, 0, 1, 3).reshape(t, heads, dim)

    return jax.vmap(one_row)(qg, k, v, q_seg, kv_seg).astype(q.dtype)


def _cudnn(q, k, v, seg, *, causal):
    """cuDNN flash attention: roll each row so its real tokens come first, then per-row lengths."""
    b, t, heads, dim = q.shape
    real = seg != 0
    first = jnp.argmax(real, axis=1)  # leading padding of each row
    lengths = jnp.sum(real, axis=1).astype(jnp.int32)
    idx = (jnp.arange(t)[None, :] + first[:, None]) % t
    roll = jax.vmap(lambda x, i: x[i])
    out = jax.nn.dot_product_attention(
        roll(q, idx), roll(k, idx), roll(v, idx), is_causal=causal,
        query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn")
    back = (jnp.arange(t)[None, :] - first[:, None]) % t
    return jnp.where(real[..., None, None], roll(out, back), 0).astype(q.dtype)
