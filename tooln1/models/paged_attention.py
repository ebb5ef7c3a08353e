"""Attention over a paged KV cache: each sequence reads only the pages its page table names.

A page pool holds every layer's keys (and one holds the values) as ``[kv_heads, L, pages, rows, width]``,
a page's tokens one after another in ``rows x width`` (`page_shape`: ``[page_size, head_dim]``, or for
a head under 128 wide, rows of 128 lanes holding several tokens each). Merging L and pages is free, so
the TPU Pallas kernel, which takes one layer's ``[kv_heads, pages, page_size, head_dim]``, reads every
layer's pool as one with layer ``l``'s page ``p`` at ``l * pages + p`` (slicing a layer out of a stacked
pool copied it for the kernel at every step). A sequence's page table ``[M]`` lists its pages in order
and its length says how many leading slots are real. Page 0 is the engine's scratch page: rows and
tokens with nothing to write write there, and a table padded with 0 is masked by the length.

* `write_pages` scatters new keys/values to (page, offset) slots of one layer, in the pool's dtype
  (`tooln1.platform.kv_storage`: bfloat16 as its bits on a CPU); `write_rows` writes the same as whole
  rows, the scatter XLA:TPU vectorizes (`tooln1.platform.decode_layout` picks it on a TPU).
* `ragged_paged_attention` is decode attention (one query per sequence): JAX's Pallas kernels on TPU and,
  for 16-bit KV, on GPU (Triton); elsewhere a pure-JAX split-K loop over (sequence, block of pages) items
  up to each sequence's own length, so the cost follows the real lengths, not the table width or the
  longest sequence. Given `prefix_groups`, it reads the leading pages that sequences share (the G samples
  of a prompt) once a step for the whole group, its members' queries together, then each sequence's own
  pages, and merges the two softmaxes.
* `gather_pages` reads one sequence's pages back as a contiguous ``[M*page_size, kv_heads, D]``
  (the prior context of a prefill chunk).
* `sharded_paged_attention` is decode attention for the engine's batch shards, each with its own pool
  (page numbers local to it): the pure-JAX path ``vmap``s over the shards, which XLA partitions along
  them without communication; the Pallas kernel runs per device under ``shard_map``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from tooln1.platform.kv_storage import BFLOAT16_BITS, load, store
from tooln1.sharding import batch_axes, logical_to_spec, platform

MASKED = -1e30  # finite, so a block with no real slot adds exp(MASKED - m) = 0 rather than NaN
LANES = 128


def page_shape(page_size: int, head_dim: int) -> tuple[int, int]:
    """A page's ``(rows, width)`` in a pool: ``(page_size, head_dim)``, or for a head that divides 128 lanes,
    rows of 128 (16 tokens x 64 -> 8 x 128). TPU tiles pad a minor dim to 128 lanes, so XLA:TPU kept
    64-wide pools with the pages dim minor-most and copied both pools to and from a head-minor layout
    around every decode loop and prefill. Both shapes hold the same bytes in the same order: a free
    reshape on a CPU or GPU."""
    if head_dim < LANES and LANES % head_dim == 0 and page_size * head_dim % LANES == 0:
        return page_size * head_dim // LANES, LANES
    return page_size, head_dim


def _tokens_per_page(pool: jax.Array, head_dim: int) -> int:
    return pool.shape[-2] * pool.shape[-1] // head_dim


def write_pages(pool: jax.Array, layer, new: jax.Array, pages: jax.Array, offsets: jax.Array) -> jax.Array:
    """``pool[:, layer, pages[t], offsets[t]] = new[t]`` for new ``[T, kv_heads, D]``; ``layer`` may be traced.

    One scatter per kv head, each writing [T, D] rows: a scatter of [T, kv_heads, D] made XLA:TPU lay
    the pool out with the heads next to D, then copy the whole pool to and from that layout around
    the decode loop and copy each layer's pages back for the attention kernel at every step. In a
    pool of 128-lane rows (`page_shape`) each token is a window of D lanes within its row."""
    new = store(new, pool.dtype)
    d, width = new.shape[-1], pool.shape[-1]
    flat = offsets * d  # the token's first lane within its page
    dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0, 1, 2, 3),
                                           scatter_dims_to_operand_dims=(0, 1, 2, 3, 4))
    for head in range(pool.shape[0]):
        at = [jnp.full_like(pages, head), jnp.full_like(pages, layer), pages, flat // width, flat % width]
        pool = jax.lax.scatter(pool, jnp.stack(at, axis=-1), new[:, head], dims,
                               mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return pool


def write_rows(pool: jax.Array, layer, new: jax.Array, pages: jax.Array, offsets: jax.Array) -> jax.Array:
    """`write_pages` as scatters of whole rows, which XLA:TPU runs as vectorized ops: `write_pages`' scatters
    index into a row's lanes, and XLA:TPU expands each into a loop of one step per token (4 x 8,192
    sequential steps a layer at an 8,192-token prefill chunk; docs/benchmarks.md). One scatter per kv
    head, as in `write_pages`: one of all heads' rows made XLA:TPU copy both whole pools to and from a
    layout with the heads next to the lanes.

    Each token writes its whole row: in a pool of 128-lane rows holding several tokens (`page_shape`)
    the row's other tokens come from ``new`` where the tokens next to it in ``new`` write them, else from
    the pool. So the tokens written to one row must be adjacent in ``new`` (one prompt's run, or one
    slot's token), which the engine's chunks and decode steps are; page 0, the scratch page, may end up
    holding other values than `write_pages` leaves there."""
    new = store(new, pool.dtype)
    t, _, d = new.shape
    per_row = pool.shape[-1] // d  # tokens a row holds
    row = offsets // per_row
    if per_row > 1:
        first = offsets - offsets % per_row  # the offset of the row's first token
        src = jnp.arange(t)[:, None] + first[:, None] + jnp.arange(per_row) - offsets[:, None]  # [T, per_row]
        at = jnp.clip(src, 0, t - 1)
        mine = (src == at) & (pages[at] == pages[:, None]) & (offsets[at] == first[:, None] + jnp.arange(per_row))
    dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0, 1, 2, 3),
                                           scatter_dims_to_operand_dims=(0, 1, 2, 3))
    for head in range(pool.shape[0]):
        rows = new[:, head]  # [T, width] when a token fills its row
        if per_row > 1:
            old = pool[head, layer, pages, row].reshape(t, per_row, d)
            rows = jnp.where(mine[..., None], rows[at], old).reshape(t, -1)
        index = jnp.stack([jnp.full_like(pages, head), jnp.full_like(pages, layer), pages, row], axis=-1)
        pool = jax.lax.scatter(pool, index, rows, dims, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return pool


def gather_pages(pool: jax.Array, page_table: jax.Array, layer=None, head_dim: int | None = None) -> jax.Array:
    """One sequence's keys or values ``[M*page_size, kv_heads, D]`` from one layer's pool [KV, N, rows, width],
    or with ``layer`` from all layers' [KV, L, N, rows, width] (one gather: no copy of the layer's pool).
    ``head_dim`` D: the pool's width by default."""
    kv, d = pool.shape[0], head_dim or pool.shape[-1]
    pages = pool[:, page_table] if layer is None else pool[:, layer, page_table]  # [KV, M, rows, width]
    return load(pages.reshape(kv, -1, d).transpose(1, 0, 2))


def _partial_blocks(qg, k_pages, v_pages, starts, ends, page_table, pages_per_block: int, layer, score_scale: float):
    """Pure JAX split-K: each sequence's query rows qg ``[S, KV, R, D]`` over its cached slots ``[starts,
    ends)``, as the softmax's running (max, denominator, weighted values) ``[S, KV, R]``, ``[S, KV, R]``,
    ``[S, KV, R, D]``, so passes over disjoint slots merge (`_merge`). Every (sequence, block of
    ``pages_per_block`` pages) pair in its range is one work item; each loop step reads a fixed number of
    items and merges their partial softmaxes into their sequences'. A short sequence beside a long one
    costs its own blocks only, where a loop over blocks up to the longest length would read every
    sequence's padding.

    With ``layer``, the pools are every layer's and each block gathers straight from them: slicing
    out the layer first would copy its whole pool at every decode step."""
    s, kv, rows, d = qg.shape
    ps = _tokens_per_page(k_pages, d)
    read = (lambda pool, pages: pool[:, pages]) if layer is None else (  # [KV, W, bp, rows, width]
        lambda pool, pages: pool[:, layer, pages])
    m_pages = page_table.shape[1]
    bp = max(1, min(pages_per_block, m_pages))
    block = bp * ps
    table = jnp.pad(page_table, ((0, 0), (0, bp)))  # a range's last block may run past the table: page 0, masked
    # Items per loop step: each step has a fixed cost, so take several blocks per sequence at once;
    # the last step's unused items cost a masked block each.
    width = max(16, 2 * s)
    first_page = starts // ps
    counts = jnp.where(ends > starts, (ends - first_page * ps + block - 1) // block, 0)  # blocks of each sequence
    last = jnp.cumsum(counts)
    total = last[-1]

    def body(i, carry):
        m, denom, acc = carry
        item = i * width + jnp.arange(width)
        real = item < total
        seq = jnp.minimum(jnp.searchsorted(last, item, side="right"), s - 1)
        first = first_page[seq] + (item - last[seq] + counts[seq]) * bp  # the item's first page-table column
        pages = jnp.where(real[:, None], jnp.take_along_axis(table[seq], first[:, None] + jnp.arange(bp), axis=1), 0)
        k = load(read(k_pages, pages)).reshape(kv, width, block, d)
        v = load(read(v_pages, pages)).reshape(kv, width, block, d)
        # Scores [KV, W, block, R], the gathered keys' own layout: as [.., R, block] XLA:CPU transposed
        # every key block first.
        scores = jnp.einsum("kwnd,wkgd->kwng", k, qg[seq], preferred_element_type=jnp.float32) * score_scale
        slot = first[:, None] * ps + jnp.arange(block)
        valid = (slot >= starts[seq][:, None]) & (slot < ends[seq][:, None]) & real[:, None]
        valid = valid[None, :, :, None]
        m_item = jnp.where(valid, scores, MASKED).max(-2)  # [KV, W, R]
        p = jnp.where(valid, jnp.exp(scores - m_item[:, :, None]), 0.0)
        m_item = m_item.transpose(1, 0, 2)  # [W, KV, R]
        owner = ((seq[:, None] == jnp.arange(s)) & real[:, None]).astype(jnp.float32)  # [W, S]
        m_new = jnp.maximum(m, jnp.where(owner[:, :, None, None] > 0, m_item[:, None], MASKED).max(0))
        weight = jnp.exp(m_item - m_new[seq]) * real[:, None, None]  # rescales each item to its sequence's max
        scale = jnp.exp(m - m_new)
        denom = denom * scale + jnp.einsum("ws,wkg->skg", owner, p.sum(-2).transpose(1, 0, 2) * weight)
        pv = jnp.einsum("kwng,kwnd->wkgd", p, v, preferred_element_type=jnp.float32)
        acc = acc * scale[..., None] + jnp.einsum("ws,wkgd->skgd", owner, pv * weight[..., None])
        return m_new, denom, acc

    init = (jnp.full((s, kv, rows), MASKED, jnp.float32), jnp.zeros((s, kv, rows), jnp.float32),
            jnp.zeros((s, kv, rows, d), jnp.float32))
    return jax.lax.fori_loop(0, (total + width - 1) // width, body, init)


def _reference_blocks(q, k_pages, v_pages, lengths, page_table, pages_per_block: int, layer) -> jax.Array:
    """Decode attention in pure JAX: each sequence over its first ``lengths`` slots (`_partial_blocks`)."""
    qg, score_scale = _grouped_queries(q, k_pages.shape[0], k_pages.dtype)
    _, denom, acc = _partial_blocks(qg, k_pages, v_pages, jnp.zeros_like(lengths), lengths, page_table,
                                    pages_per_block, layer, score_scale)
    return (acc / denom[..., None]).reshape(q.shape).astype(q.dtype)


def _grouped_queries(q, kv_heads: int, pool_dtype):
    """q [S, heads, D] as [S, KV, G, D] in the product's dtype, and the scale its scores still need: bf16
    pages meet bf16 queries (a bf16 x bf16 -> f32 product, the CPU's fast path), scaled after."""
    s, h, d = q.shape
    qg = q.reshape(s, kv_heads, h // kv_heads, d)
    if pool_dtype in (BFLOAT16_BITS, jnp.bfloat16):
        return qg.astype(jnp.bfloat16), d ** -0.5
    return qg.astype(jnp.float32) * d ** -0.5, 1.0


def _merge(a, b):
    """Two running softmaxes (max, denominator, weighted values) over disjoint slots as one."""
    m = jnp.maximum(a[0], b[0])
    wa, wb = jnp.exp(a[0] - m), jnp.exp(b[0] - m)
    return m, a[1] * wa + b[1] * wb, a[2] * wa[..., None] + b[2] * wb[..., None]


class PrefixGroups(NamedTuple):
    """Sequences that share their tables' leading pages, each group's shared pages read once for all its
    members (`prefix_groups`). Groups are indexed like the sequences: group ``i`` is led by sequence ``i``
    and reads its table; it is empty (``shared_len`` 0) when ``i`` leads none."""

    members: jax.Array  # [S, per_group] int32: each group's sequences, S where none
    shared_len: jax.Array  # [S] int32: slots of each group's shared pages (0: an empty group)
    group: jax.Array  # [S] int32: each sequence's group
    member: jax.Array  # [S] int32: its place in the group's members
    start: jax.Array  # [S] int32: where its own slots begin (its shared slots, or 0)


def prefix_groups(page_table: jax.Array, shared_pages: jax.Array, page_size: int, per_group: int) -> PrefixGroups:
    """Groups of at most ``per_group`` sequences whose page tables [S, M] start with the same
    ``shared_pages`` [S] pages (0: none shared). A page holds the keys of one prefix (the prefix cache keys it
    by every token before it), so tables that hold the same last shared page at the same column share the
    tokens before it, and the group reads its leader's pages for them; larger sets are cut into groups of
    ``per_group``. A sequence left alone (the others of its prompt not decoding) shares nothing."""
    s = page_table.shape[0]
    index = jnp.arange(s, dtype=jnp.int32)
    last = jnp.take_along_axis(page_table, jnp.maximum(shared_pages - 1, 0)[:, None], axis=1)[:, 0]
    key = jnp.where(shared_pages > 0, last, -1 - index)  # a sequence that shares nothing is a group of its own
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    sorted_key = key[order]
    run_start = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.ones(1, bool), sorted_key[1:] != sorted_key[:-1]]),
                                         index, 0))
    rank = index - run_start
    lead = order[run_start + rank // per_group * per_group]  # the sequence leading each sorted position's group
    member = rank % per_group
    inverse = jnp.zeros(s, jnp.int32).at[order].set(index)
    members = jnp.full((s, per_group), s, jnp.int32).at[lead, member].set(order)
    group = lead[inverse]
    # A group of one shares with no one: it reads all its pages in its own pass, as wide as its own queries,
    # where the shared pass would score them for per_group members' rows
    together = jnp.sum(members < s, axis=1) > 1
    shared_len = jnp.zeros(s, jnp.int32).at[lead].set(shared_pages[order] * page_size)
    return PrefixGroups(members=members, shared_len=jnp.where(together, shared_len, 0), group=group,
                        member=member[inverse], start=jnp.where(together[group], shared_pages * page_size, 0))


def _grouped_blocks(q, k_pages, v_pages, lengths, page_table, groups: PrefixGroups, pages_per_block: int,
                    layer) -> jax.Array:
    """Decode attention that reads each group's shared pages once for all its sequences' queries (one pass
    over groups, as wide as their members' queries together), then each sequence's own slots from
    ``groups.start``, merged. G samples of one prompt decode over the prompt's pages: one read of them a
    step instead of G."""
    s, h, d = q.shape
    kv = k_pages.shape[0]
    qg, score_scale = _grouped_queries(q, kv, k_pages.dtype)
    per_group = groups.members.shape[1]
    padded = jnp.concatenate([qg, jnp.zeros_like(qg[:1])])  # row S: a missing member
    group_q = padded[groups.members].transpose(0, 2, 1, 3, 4).reshape(s, kv, per_group * (h // kv), d)
    shared = _partial_blocks(group_q, k_pages, v_pages, jnp.zeros_like(lengths), groups.shared_len, page_table,
                             pages_per_block, layer, score_scale)
    own = _partial_blocks(qg, k_pages, v_pages, groups.start, lengths, page_table, pages_per_block, layer,
                          score_scale)
    # each sequence's rows of its group's pass: [S, KV, per_group, G] at its member index
    mine = tuple(x.reshape(s, kv, per_group, h // kv, *x.shape[3:])[groups.group, :, groups.member] for x in shared)
    _, denom, acc = _merge(mine, own)
    return (acc / denom[..., None]).reshape(s, h, d).astype(q.dtype)


def kernel_fits(head_dim: int) -> bool:
    """Whether the TPU kernel lowers for this head size: its blocks take whole 128-lane rows (Qwen2.5-0.5B's
    64 failed to lower; 7B's 128 compiles)."""
    return head_dim % 128 == 0


def gpu_kernel_fits(head_dim: int, page_size: int, dtype) -> bool:
    """Whether the GPU (Triton) kernel takes these pools: 16-bit KV (a float32 one would meet its dots in
    TF32 and lose float32 parity), and head and page sizes that are powers of two (Triton's block shapes)."""
    pow2 = lambda n: n >= 16 and n & (n - 1) == 0  # noqa: E731
    return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and pow2(head_dim) and page_size & (page_size - 1) == 0


def _backend(backend: str | None, head_dim: int, page_size: int, dtype, mesh: Mesh | None) -> str:
    """"pallas" where the TPU kernel runs (the mesh's platform, the default device's without one, is a TPU,
    compile-only ones too, and the head size fits it), "pallas_gpu" where the GPU one does, else "jax"."""
    if backend:
        return backend
    target = platform(mesh)
    if target == "tpu" and kernel_fits(head_dim):
        return "pallas"
    if target in ("gpu", "cuda") and gpu_kernel_fits(head_dim, page_size, dtype):
        return "pallas_gpu"
    return "jax"


def reads_in_groups(head_dim: int, page_size: int, dtype, mesh: Mesh | None) -> bool:
    """Whether decode attention runs the pure-JAX path here, the one that takes `prefix_groups`."""
    return _backend(None, head_dim, page_size, dtype, mesh) == "jax"


def _tpu_kernel():
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    return paged_attention


def _gpu_kernel():
    from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention

    return paged_attention


def _one_pool(k_pages, v_pages, page_table, layer, head_dim: int):
    """Every layer's pages as one pool, layer ``l``'s page ``p`` at ``l * N + p``: the kernels take one layer's
    ``[KV, pages, page_size, D]``, and merging L and N is free where slicing the layer out copied it (so
    is splitting 128-lane rows back into tokens, on a GPU, whose kernel takes such pools)."""
    kv, ps = k_pages.shape[0], _tokens_per_page(k_pages, head_dim)
    n = k_pages.shape[-3]
    k_pages, v_pages = (p.reshape(kv, -1, ps, head_dim) for p in (k_pages, v_pages))
    return k_pages, v_pages, page_table if layer is None else page_table + layer * n


def _scaled(q):
    return (q.astype(jnp.float32) * (q.shape[-1] ** -0.5)).astype(q.dtype)  # the kernels do not scale


def _pallas_tpu(q, k_pages, v_pages, lengths, page_table, pages_per_block: int, layer=None, cores: int = 1
                ) -> jax.Array:
    """JAX's Pallas TPU paged attention. On a chip with ``cores`` TensorCores behind one device (v4, v5p:
    megacore) it is told to split over them, by kv head, else by sequence: left at its default, it runs
    on one core and decode attention gets half the chip."""
    k_pages, v_pages, page_table = _one_pool(k_pages, v_pages, page_table, layer, q.shape[-1])
    m_pages = page_table.shape[1]
    block = max(b for b in range(1, min(pages_per_block, m_pages) + 1) if m_pages % b == 0)
    return _tpu_kernel()(_scaled(q), k_pages, v_pages, lengths, page_table, pages_per_compute_block=block,
                         megacore_mode=megacore_mode(cores, k_pages.shape[0], q.shape[0]))


def megacore_mode(cores: int, kv_heads: int, sequences: int) -> str | None:
    """The TPU kernel's split over a device's TensorCores: "kv_head", "batch", or None (one core; the
    kernel may hang if told to split where there is nothing to split over)."""
    if cores < 2:
        return None
    return "kv_head" if kv_heads % 2 == 0 else "batch" if sequences % 2 == 0 else None


def tensor_cores(mesh: Mesh | None) -> int:
    """TensorCores behind each device (2 on a megacore v4 / v5p chip, compile-only devices too)."""
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    return getattr(device, "num_cores", 1) if device.platform == "tpu" else 1


# Partitions of a sequence's pages the GPU kernel runs as separate programs (its default), merged after:
# one sequence's decode at paper lengths is then 16 programs per kv head, not one.
GPU_SPLITS = 16


def _pallas_gpu(q, k_pages, v_pages, lengths, page_table, pages_per_block: int, layer=None) -> jax.Array:
    """JAX's Pallas GPU (Triton) paged attention. It reads pages straight from the pool, where the pure-JAX
    path gathers each block into a temporary first. Its table must split into ``k_splits`` partitions of
    whole compute blocks: padded with page 0, which the lengths mask. Triton takes power-of-two array
    sizes only, so a compute block is a power of two of pages (a table of 5 failed to lower)."""
    k_pages, v_pages, page_table = _one_pool(k_pages, v_pages, page_table, layer, q.shape[-1])
    m_pages = page_table.shape[1]
    block = 1 << (max(1, min(pages_per_block, m_pages)).bit_length() - 1)
    splits = max(1, min(GPU_SPLITS, -(-m_pages // block)))
    page_table = jnp.pad(page_table, ((0, 0), (0, -m_pages % (splits * block))))
    return _gpu_kernel()(_scaled(q), k_pages, v_pages, page_table, lengths.astype(jnp.int32),
                         pages_per_compute_block=block, k_splits=splits)


def _kernel(backend: str, mesh: Mesh | None):
    """The kernel of ``backend`` (the TPU one told its device's cores), None for the pure-JAX path."""
    if backend == "pallas":
        return functools.partial(_pallas_tpu, cores=tensor_cores(mesh))
    return _pallas_gpu if backend == "pallas_gpu" else None


def ragged_paged_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, lengths: jax.Array,
                           page_table: jax.Array, pages_per_block: int = 8, backend: str | None = None,
                           layer=None) -> jax.Array:
    """Decode attention: q ``[S, heads, D]`` over sequence s's first ``lengths[s]`` (>= 1) cached slots.

    ``k_pages``/``v_pages`` are one layer's pools ``[kv_heads, N, rows, width]`` (`page_shape`), or with
    ``layer`` (may be traced) all layers' ``[kv_heads, L, N, rows, width]``; ``page_table`` ``[S, M]``.
    ``backend`` "pallas" (TPU) / "pallas_gpu" / "jax" forces an implementation (default: `_backend`)."""
    q, k_pages, v_pages, lengths, page_table = map(jnp.asarray, (q, k_pages, v_pages, lengths, page_table))
    backend = _backend(backend, q.shape[-1], _tokens_per_page(k_pages, q.shape[-1]), k_pages.dtype, None)
    kernel = _kernel(backend, None)
    if kernel is not None:
        return kernel(q, k_pages, v_pages, lengths, page_table, pages_per_block, layer)
    return _reference_blocks(q, k_pages, v_pages, lengths, page_table, pages_per_block, layer)


def sharded_paged_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, lengths: jax.Array,
                            page_table: jax.Array, layer, mesh: Mesh | None = None, pages_per_block: int = 8,
                            backend: str | None = None, groups: PrefixGroups | None = None) -> jax.Array:
    """`ragged_paged_attention` for every batch shard: q ``[X, S, heads, D]``, all layers' pools ``[X,
    kv_heads, L, N, rows, width]`` (shard x's pages numbered within its pool), ``lengths`` [X, S] and
    ``page_table`` [X, S, M]; returns [X, S, heads, D]. ``mesh``: where the shards live (one per device
    of its batch axes; see `tooln1.rollout.programs`), whose platform picks the backend (compile-only devices too).
    ``groups`` (`prefix_groups` per shard, the pure-JAX path only): read shared leading pages once a group."""
    backend = _backend(backend, q.shape[-1], _tokens_per_page(k_pages, q.shape[-1]), k_pages.dtype, mesh)
    kernel = _kernel(backend, mesh)
    if kernel is None:
        if groups is not None:
            one = lambda *a: _grouped_blocks(*a, pages_per_block, layer)  # noqa: E731
            return jax.vmap(one)(q, k_pages, v_pages, lengths, page_table, groups)
        one = lambda *a: _reference_blocks(*a, pages_per_block, layer)  # noqa: E731
        return jax.vmap(one)(q, k_pages, v_pages, lengths, page_table)
    if groups is not None:
        raise ValueError(f"paged attention: prefix groups run on the pure-JAX path only, not {backend!r}")

    def per_device(q, k_pages, v_pages, lengths, page_table):  # this device's shard: X = 1
        return kernel(q[0], k_pages[0], v_pages[0], lengths[0], page_table[0], pages_per_block, layer)[None]

    if mesh is None:
        return per_device(q, k_pages, v_pages, lengths, page_table)
    # XLA cannot partition a custom call: run it on each device's own shard (and kv heads, when the
    # tensor axis splits them; query heads then follow their kv heads)
    shards = batch_axes(mesh) or None
    heads = logical_to_spec(("kv_heads",), k_pages.shape[1:2], mesh)[0]
    q_spec, pool_spec = PartitionSpec(shards, None, heads), PartitionSpec(shards, heads)
    specs = (q_spec, pool_spec, pool_spec, PartitionSpec(shards), PartitionSpec(shards))
    return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=q_spec, check_vma=False)(
        q, k_pages, v_pages, lengths, page_table)


__all__ = ["page_shape", "PrefixGroups", "prefix_groups", "reads_in_groups", "write_pages", "write_rows",
           "gather_pages", "ragged_paged_attention", "sharded_paged_attention", "kernel_fits", "gpu_kernel_fits",
           "megacore_mode", "tensor_cores"]
