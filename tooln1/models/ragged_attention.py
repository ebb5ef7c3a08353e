"""Paged KV in one pool, keys and values interleaved by head, read by JAX's TPU ragged paged attention kernel
for prefill chunks and decode steps alike.

A batch shard's pool is ``[L, N, page_size, 2 * kv_heads, D]``: slot ``t`` of page ``p`` of layer ``l``
holds kv head ``h``'s key at ``[l, p, t, 2h]`` and its value at ``[l, p, t, 2h + 1]``, the layout
`jax.experimental.pallas.ops.tpu.ragged_paged_attention` reads (one layer's ``[pages, page_size, 2KV, D]``;
merging L and N is free, so layer ``l``'s page ``p`` is page ``l * N + p``). The kernel takes a batch of
*sequences*, each a run of queries that are the last tokens of its cached keys, each over its own pages:
a prefill chunk's prompts (none scores another's context) and a decode step's slots (one query each) are
the same call. With the two pools of `tooln1.models.paged_attention` a prefill chunk gathers its
context into a contiguous copy and scores it with another kernel, masking other prompts' blocks.

A sequence ``s`` of a call is rows ``starts[s]:starts[s + 1]`` of the queries, over the first
``lengths[s]`` slots of the pages ``table[s]`` lists; the first rows with ``lengths > 0`` are the
sequences, and query rows from ``starts[sequences]`` on are padding (zeros out).

* `write` scatters new keys and values to (page, offset) slots of one layer, a ``[2KV, D]`` window a token
  (`sharded_write` for every batch shard).
* `attention` is the kernel on a TPU; elsewhere a dense pure-JAX reference of its semantics, gathering
  every query's pages (the tests' reference and CPU path, sized for tests, not for use).
* `sharded_attention` is either for every batch shard of the engine.

The kernel lowers for heads of 128 lanes and more (`kernel_fits`), runs on one TensorCore, and Pallas'
TPU interpreter in this JAX cannot run it (it reshapes a scratch ref), so the tests check the reference
against JAX's own reference of the kernel and the kernel's programs compile-only for a TPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from tooln1.platform.kv_storage import load, store
from tooln1.sharding import batch_axes, logical_to_spec, platform

POOL_AXES = ("batch", "layers", None, None, "kv_heads", None)  # [X, L, N, page_size, 2KV, D]
# Block sizes: the kernel reads tuned ones for the default device, which a compile-only target is not.
# Its untuned default is 128 pages of keys and 32 queries a block; keys and values are double-buffered in
# VMEM, so a block of pages is capped to fit this budget (128 pages of 4 float32 kv heads overflowed
# v5e's scoped VMEM).
PAGES_PER_BLOCK = 128
QUERIES_PER_BLOCK = 32
KV_BLOCK_BYTES = 4 << 20


def pool_shape(layers: int, pages: int, page_size: int, kv_heads: int, head_dim: int) -> tuple[int, ...]:
    return layers, pages, page_size, 2 * kv_heads, head_dim


def pool_spec(shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """[X, L, N, page_size, 2KV, D] split over the batch axes and, where the tensor axis divides the kv
    heads, by whole kv heads: each device keeps its heads' keys and values side by side."""
    kv_heads = (*shape[:4], shape[4] // 2, shape[5])
    return logical_to_spec(POOL_AXES, kv_heads, mesh)


def kernel_fits(head_dim: int) -> bool:
    """Whether the kernel lowers for this head size: it keeps per-head statistics in 128-lane rows that
    must tile the head (Qwen2.5-0.5B's 64 fails to trace)."""
    return head_dim % 128 == 0


def write(pool: jax.Array, layer, k: jax.Array, v: jax.Array, pages: jax.Array, offsets: jax.Array) -> jax.Array:
    """``pool[layer, pages[t], offsets[t]] = interleaved(k[t], v[t])`` for k, v ``[T, kv_heads, D]``, in the
    pool's dtype; ``layer`` may be traced. Interleaved by a gather of heads: interleaved by ``stack``,
    XLA:TPU produced one projection in another layout and copied its kernel into it every round."""
    kv = k.shape[1]
    interleave = jnp.arange(2 * kv).reshape(2, kv).T.reshape(-1)  # [k0, v0, k1, v1, ...] of [k0, k1, .., v0, v1, ..]
    new = store(jnp.concatenate([k, v], axis=1)[:, interleave], pool.dtype)
    dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(1, 2), inserted_window_dims=(0, 1, 2),
                                           scatter_dims_to_operand_dims=(0, 1, 2))
    index = jnp.stack([jnp.full_like(pages, layer), pages, offsets], axis=-1)
    return jax.lax.scatter(pool, index, new, dims, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def sharded_write(pool: jax.Array, layer, k: jax.Array, v: jax.Array, pages: jax.Array, offsets: jax.Array,
                  mesh: Mesh | None = None) -> jax.Array:
    """`write` for every batch shard: pool [X, L, N, page_size, 2KV, D], k and v [X, T, KV, D], pages and
    offsets [X, T]. On a mesh each device interleaves its own kv heads (``shard_map``): interleaved as
    global arrays, the tensor-split heads of k and v were all-gathered and exchanged at every layer."""
    write_all = jax.vmap(write, in_axes=(0, None, 0, 0, 0, 0))
    if mesh is None:
        return write_all(pool, layer, k, v, pages, offsets)
    shards = batch_axes(mesh) or None
    heads = pool_spec(pool.shape, mesh)[4]
    kv, rows = PartitionSpec(shards, None, heads), PartitionSpec(shards)
    pool_in = PartitionSpec(shards, None, None, None, heads)
    return jax.shard_map(write_all, mesh=mesh, in_specs=(pool_in, PartitionSpec(), kv, kv, rows, rows),
                         out_specs=pool_in, check_vma=False)(pool, jnp.asarray(layer, jnp.int32), k, v, pages, offsets)


def copy_pages(pool: jax.Array, src: jax.Array, dst: jax.Array) -> jax.Array:
    """Every layer's page ``src[i]`` copied to ``dst[i]``, one page at a time: as one gather and scatter of
    all pages, XLA:TPU laid the whole pool out with its slots minor to the heads and copied it to and
    from that layout around every decode round."""
    def one(i, pool):
        page = jax.lax.dynamic_slice_in_dim(pool, src[i], 1, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(pool, page, dst[i], axis=1)

    return jax.lax.fori_loop(0, src.shape[0], one, pool)


def _real_rows(q: jax.Array, lengths: jax.Array, starts: jax.Array) -> jax.Array:
    return jnp.arange(q.shape[0]) < starts[jnp.sum(lengths > 0)]


def _reference(q, pool, lengths, starts, table, layer) -> jax.Array:
    """The kernel's semantics in plain JAX: each query row over its sequence's slots up to its own position
    (the sequence's last query sits at slot ``length - 1``)."""
    t, h, d = q.shape
    kv = pool.shape[-2] // 2
    rows = jnp.arange(t)
    seq = jnp.clip(jnp.searchsorted(starts, rows, side="right") - 1, 0, table.shape[0] - 1)
    cached = load(pool[layer, table[seq]])  # [T, M, page_size, 2KV, D]
    cached = cached.reshape(t, -1, 2 * kv, d).astype(jnp.float32)
    keys, values = cached[:, :, 0::2], cached[:, :, 1::2]
    position = lengths[seq] - (starts[seq + 1] - rows)  # the query's own slot
    visible = jnp.arange(keys.shape[1]) <= position[:, None]  # [T, slots]
    qg = q.reshape(t, kv, h // kv, d).astype(jnp.float32)
    scores = jnp.einsum("tkgd,tskd->tkgs", qg, keys) * d ** -0.5
    scores = jnp.where(visible[:, None, None], scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("tkgs,tskd->tkgd", weights, values).reshape(t, h, d)
    return jnp.where(_real_rows(q, lengths, starts)[:, None, None], out, 0).astype(q.dtype)


def pages_per_block(q: jax.Array, pool: jax.Array, pages_per_seq: int) -> int:
    """The kernel's pages of keys a block: its default, or what fits `KV_BLOCK_BYTES` double-buffered with
    the kv heads it takes at once."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention.kernel import get_min_heads_per_blk

    _, _, page_size, kv2, d = pool.shape
    heads = get_min_heads_per_blk(q.shape[1], kv2, q.dtype, pool.dtype)[1]
    fit = KV_BLOCK_BYTES // (2 * page_size * heads * d * pool.dtype.itemsize)
    return max(1, min(PAGES_PER_BLOCK, pages_per_seq, fit))


def _kernel(q, pool, lengths, starts, table, layer) -> jax.Array:
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    layers, n, page_size, kv2, d = pool.shape
    sequences = jnp.sum(lengths > 0, dtype=jnp.int32)[None]
    out = ragged_paged_attention(
        q, pool.reshape(layers * n, page_size, kv2, d), lengths, table + layer * n, starts, sequences,
        sm_scale=d ** -0.5, num_kv_pages_per_block=pages_per_block(q, pool, table.shape[1]),
        num_queries_per_block=min(QUERIES_PER_BLOCK, q.shape[0]))
    return jnp.where(_real_rows(q, lengths, starts)[:, None, None], out, 0)  # the kernel leaves padding unwritten


def attention(q: jax.Array, pool: jax.Array, lengths: jax.Array, starts: jax.Array, table: jax.Array, layer,
              backend: str = "jax") -> jax.Array:
    """q ``[T, heads, D]`` over all layers' pool ``[L, N, page_size, 2KV, D]`` at ``layer``; ``lengths`` [R],
    ``starts`` [R + 1] and ``table`` [R, M] int32 as the module says. ``backend``: "pallas" (the TPU
    kernel) or "jax" (the reference)."""
    fn = _kernel if backend == "pallas" else _reference
    return fn(q, pool, lengths.astype(jnp.int32), starts.astype(jnp.int32), table.astype(jnp.int32), layer)


def sharded_attention(q: jax.Array, pool: jax.Array, lengths: jax.Array, starts: jax.Array, table: jax.Array, layer,
                      mesh: Mesh | None = None, backend: str | None = None) -> jax.Array:
    """`attention` for every batch shard: q [X, T, heads, D], pool [X, L, N, page_size, 2KV, D] (page numbers
    local to the shard), lengths [X, R], starts [X, R + 1], table [X, R, M]. The kernel runs where the
    mesh's (else the default device's) platform is a TPU, per device under ``shard_map`` (XLA cannot
    partition a custom call), on its batch shard and kv heads."""
    backend = backend or ("pallas" if platform(mesh) == "tpu" else "jax")
    one = functools.partial(attention, layer=layer, backend=backend)
    if backend == "jax" or mesh is None:
        return jax.vmap(one)(q, pool, lengths, starts, table)
    shards = batch_axes(mesh) or None
    heads = pool_spec(pool.shape, mesh)[4]
    q_spec, pool_spec_ = PartitionSpec(shards, None, heads), PartitionSpec(shards, None, None, None, heads)
    rows = PartitionSpec(shards)
    return jax.shard_map(jax.vmap(one), mesh=mesh, in_specs=(q_spec, pool_spec_, rows, rows, rows), out_specs=q_spec,
                         check_vma=False)(q, pool, lengths, starts, table)


__all__ = ["POOL_AXES", "pool_shape", "pool_spec", "kernel_fits", "write", "sharded_write", "copy_pages",
           "attention", "sharded_attention"]
