"""The rollout engine's device programs: a *prefill* (one chunk of prompt tokens per batch shard into its
pages) and a *round* (slot admissions, then up to ``max_steps`` decode steps of the first ``width`` slots
of every shard over the paged KV cache). `tooln1.rollout.engine` is the host side that decides what each does.

Their shapes depend only on the engine's shape (shards, slots, pages, chunk, steps) and the decode
width, never on how many prompts a rollout has: a few compiled programs serve any batch.

* **Shards.** Every array leads with the batch shards ``X`` (the mesh's data x fsdp; 1 without a mesh):
  each shard has its own slots and its own page pool, page numbers are local to it, and pool reads and
  writes run per shard (``vmap`` over ``X``, which XLA partitions without communication). The pools
  are split over the batch axes instead of replicated, so every device holds its own slots' pages
  only, and the model's batch is ``X x`` slots.
* **Prefill**: ``chunk`` prompt tokens per shard, packed from one or more prompts (segment ids). A
  prompt that continues pages written before (an earlier chunk, pages reused from the prefix
  cache, or a multi-turn trajectory's earlier turns) also attends to those, gathered through the
  chunk's context table (two samples' worth of pages, shared by its segments, a page that several
  continue listed once on the blockwise path); with a ragged pool
  (`tooln1.models.ragged_attention`) each prompt reads them in place through its own page table.
  Their keys/values go to the prompt's pages. A prompt's last token is not prefilled: each sample feeds it as its first
  decode step, so prompt pages stay read-only and shared. A program of its own: inside the round, a
  ``lax.cond`` around it made XLA:GPU copy both pools in each branch.
* **Admission**: a slot takes a sample: its page table (the prompt's full pages shared, a private
  copy of the prompt's partial last page, private pages for the response), the prompt's last token,
  the sample key ``fold_in(fold_in(seed, prompt_index), sample_index)`` and the index of the
  response token it produces first (0; a continued trajectory's next index, so its turns draw on
  fresh keys).
* **Compaction**: ``perm`` reorders each shard's slots first (slot ``i`` becomes old slot ``perm[i]``),
  so the host can pack the live slots in front and decode a narrower ``width`` when few are left: the
  long tail of a rollout then costs what its live samples cost, not what all slots cost.
* **Decode**: each live slot writes its token's keys/values to its own page and attends over its own
  first ``pos + 1`` slots (ragged paged attention); the next token uses ``fold_in(sample_key, step)``.
  The loop stops after ``max_steps`` (<= ``steps``) steps, when no slot is live, once some shard has
  ended ``admit_after`` of its samples (the host can hand their slots to pending samples), or once
  every shard has ended ``narrow_after`` (the host can decode a narrower width).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tooln1.models import ragged_attention
from tooln1.models.attention import attention
from tooln1.models.chunk_attention import chunk_attention, splash_chunk_attention
from tooln1.models.paged_attention import gather_pages, prefix_groups, sharded_paged_attention, write_pages, write_rows
from tooln1.sharding import batch_axes, constrain, logical_to_spec, per_batch_shard

# Split pools (keys, values): [X, KV, L, N, rows, width] (`page_shape`); a ragged pool: `ragged_attention.POOL_AXES`
POOL_AXES = ("batch", "kv_heads", "layers", None, None, None)


class Shape(NamedTuple):
    """Everything static about the engine's programs."""

    shards: int  # X, batch shards: each has its own slots and page pool
    slots: int  # S, decode slots per shard
    pages_per_seq: int  # M, page-table width
    num_pages: int  # N, pages in each shard's pool (page 0 = scratch)
    page_size: int
    chunk: int  # prompt tokens a shard prefills per program
    chunk_block: int  # query and key block of the chunk's attention (blockwise)
    chunk_attention: str  # "blockwise", "pallas_gpu", "splash" or "ragged" (`tooln1.platform.decode_layout`)
    steps: int
    greedy: bool
    top_k: int
    use_top_p: bool
    eos_ids: tuple[int, ...]
    kv_writes: str = "tokens"  # "tokens" or "rows" (`tooln1.platform.decode_layout.kv_writes`)
    kv_pool: str = "split"  # "split" or "ragged" (`tooln1.platform.decode_layout.kv_pool`)
    chunk_sequences: int = 1  # R, prompts a prefill chunk packs at most
    # Samples whose shared prompt pages decode attention reads once for all of them (0: each slot reads its
    # own; the pure-JAX paged attention only, `tooln1.models.paged_attention.prefix_groups`)
    decode_group: int = 0
    # A chunk's segments that attend to a context start at multiples of this many tokens (0: packed one after
    # another), and a chunk program no wider than chunk_block runs the blockwise prefill in query blocks this
    # wide: a block then holds one continuation's tokens and scores its context only, where a block of
    # several scored all their contexts (wider programs, mostly prompts, keep chunk_block's blocks)
    segment_align: int = 0
    narrow_key_block: int = 512  # key block of a chunk program no wider than chunk_block (blockwise)
    # A chunk's context table lists a page once for every segment that continues it, its slots' segment id
    # the set of those segments (`tooln1.models.attention`: the blockwise path reads such ids, the kernels not)
    shared_context: bool = False

    @property
    def num_pools(self) -> int:
        """Keys and values in two pools, or in one ragged pool."""
        return 1 if self.kv_pool == "ragged" else 2

    @property
    def context_pages(self) -> int:
        """Width of a prefill chunk's context table: two samples' pages, so a chunk packs a prompt that
        continues a long cached prefix beside the tail of another one."""
        return 2 * self.pages_per_seq


class Slots(NamedTuple):
    """Per-slot decode state [X, S] (device)."""

    token: jax.Array  # int32, the token to feed next
    pos: jax.Array  # int32, its position
    step: jax.Array  # int32, index of the response token it produces
    remaining: jax.Array  # int32, response tokens still allowed
    active: jax.Array  # bool
    table: jax.Array  # [X, S, M] int32 page table
    key: jax.Array  # [X, S, *key_data] uint32 sample key data
    shared: jax.Array  # int32, leading pages of its table the prompt's other samples hold too


class Chunk(NamedTuple):
    """One prefill chunk per shard [X, C] (host-built)."""

    tokens: jax.Array
    positions: jax.Array
    seg: jax.Array  # segment within the chunk, -1 = padding
    pages: jax.Array  # destination page per token (0 for padding)
    offsets: jax.Array
    ctx_table: jax.Array  # [X, 2M] the context pages of the chunk's prompts that continue earlier pages
    ctx_seg: jax.Array  # [X, 2M * page_size] segment + 1 of each context slot (0 = unused; < 0: Shape.shared_context)
    seq_table: jax.Array  # [X, R, M] each segment's prompt's page table (a ragged pool's prefill)
    seq_lens: jax.Array  # [X, R] its tokens in the pages once the chunk is written (0 = no segment)
    seq_starts: jax.Array  # [X, R + 1] where each segment's tokens start in the chunk, then where they end


class Admit(NamedTuple):
    """Slot admissions [X, S] (host-built); rows with ``admit`` False are ignored."""

    admit: jax.Array
    token: jax.Array
    pos: jax.Array
    table: jax.Array  # [X, S, M]
    copy_src: jax.Array  # page to copy into copy_dst (0 -> 0 when nothing to copy)
    copy_dst: jax.Array
    prompt_index: jax.Array
    sample_index: jax.Array
    budget: jax.Array
    step: jax.Array  # index of the response token the slot produces first
    shared: jax.Array  # leading pages of its table shared with its prompt's other samples


def empty_slots(shape: Shape, key_data_shape: tuple[int, ...]) -> Slots:
    xs = (shape.shards, shape.slots)
    z = lambda: jnp.zeros(xs, jnp.int32)  # noqa: E731  (distinct buffers: the slots are donated)
    return Slots(z(), z(), z(), z(), jnp.zeros(xs, bool), jnp.zeros((*xs, shape.pages_per_seq), jnp.int32),
                 jnp.zeros((*xs, *key_data_shape), jnp.uint32), z())


def pool_sharding(mesh, pool_shape, kv_pool: str = "split") -> NamedSharding | None:
    """Pools split over the batch axes (a shard's pages on its devices) and kv heads over ``tensor``."""
    if mesh is None:
        return None
    if kv_pool == "ragged":
        return NamedSharding(mesh, ragged_attention.pool_spec(pool_shape, mesh))
    return NamedSharding(mesh, logical_to_spec(POOL_AXES, pool_shape, mesh))


def shard_sharding(mesh) -> NamedSharding | None:
    """Per-shard host arrays [X, ...]: shard x on the devices of batch shard x."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(batch_axes(mesh) or None))


# -- token selection ------------------------------------------------------------------------
def filter_logits(scaled: jax.Array, top_k: int, use_top_p: bool, top_p: jax.Array) -> jax.Array:
    """Top-k then top-p (HF order and tie semantics) on temperature-scaled logits [N, V]."""
    neg = jnp.asarray(-jnp.inf, scaled.dtype)
    if top_k > 0 and top_k < scaled.shape[-1]:
        sorted_vals = jax.lax.top_k(scaled, top_k)[0]  # [N, k] descending
        scaled = jnp.where(scaled < sorted_vals[:, -1:], neg, scaled)
    elif use_top_p:
        sorted_vals = -jnp.sort(-scaled, axis=-1)  # descending
    if use_top_p:
        probs = jax.nn.softmax(sorted_vals, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p
        keep = keep.at[:, 0].set(True)
        threshold = jnp.min(jnp.where(keep, sorted_vals, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < threshold, neg, scaled)
    return scaled


def select(logits, keys, steps, temperature, top_p, shape: Shape):
    """Next token [N] and ``log_softmax(logits / T)`` of it [N] (unfiltered; T = 0: plain log_softmax).
    ``keys`` is key data [N, ...]; ``temperature`` and ``top_p`` are [N] (a row's own)."""
    logits = logits.astype(jnp.float32)
    if shape.greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / temperature[:, None]
        logp = jax.nn.log_softmax(scaled, axis=-1)
        filtered = filter_logits(scaled, shape.top_k, shape.use_top_p, top_p[:, None])
        step_keys = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(keys), steps)
        token = jax.vmap(jax.random.categorical)(step_keys, filtered).astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def is_eos(token: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(token.shape, bool)
    return jnp.any(token[..., None] == jnp.asarray(eos_ids, jnp.int32), axis=-1)


def _write(pools, layer, k, v, pages, offsets, mesh, shape: Shape):
    """Each shard's new keys/values [X, T, KV, D] to its (page, offset) slots [X, T] of ``layer``, written as
    ``shape`` says (`Shape.kv_pool`, `Shape.kv_writes`)."""
    if shape.kv_pool == "ragged":
        pools = (ragged_attention.sharded_write(pools[0], layer, k, v, pages, offsets, mesh),)
    else:
        write = jax.vmap(write_rows if shape.kv_writes == "rows" else write_pages, in_axes=(0, None, 0, 0, 0))
        pools = (write(pools[0], layer, k, pages, offsets), write(pools[1], layer, v, pages, offsets))
    # The pools keep their sharding through the layers: where the kv heads do not divide the tensor axis
    # (replicated pools), XLA split them over part of it, following the tensor-sharded query heads, and
    # all-gathered both whole pools at the end of every round and prefill.
    return _keep_layout(pools, pool_sharding(mesh, pools[0].shape, shape.kv_pool))


def _keep_layout(tree, sharding):
    return tree if sharding is None else jax.lax.with_sharding_constraint(tree, sharding)


# -- the programs ---------------------------------------------------------------------------
def _query_block(shape: Shape) -> int | None:
    """The blockwise prefill's query block (`Shape.segment_align`; None: the chunk block)."""
    return shape.segment_align if shape.segment_align and shape.chunk <= shape.chunk_block else None


def _key_block(shape: Shape) -> int:
    """The blockwise prefill's key block: `Shape.narrow_key_block` in a narrow program, whose queries are a few
    continuations over long contexts; the chunk block in a wide one, whose packed prompts skip more of a
    narrower block's masked pairs."""
    return shape.narrow_key_block if shape.chunk <= shape.chunk_block else shape.chunk_block


def _prefill(model, pools, c: Chunk, shape: Shape):
    dtype = jnp.dtype(model.config.dtype)
    # The platform's chunk kernel, or blockwise (the square kernels do not take a context) in blocks of
    # EngineConfig.prefill_block (`_query_block`, `_key_block`)
    key_block = _key_block(shape)
    if shape.chunk_attention == "pallas_gpu":
        attend_fn = functools.partial(chunk_attention, mesh=model.mesh)
    elif shape.chunk_attention == "splash":  # its mask is this layout's: positions are implied
        attend_fn = lambda q, k, v, q_seg, kv_seg, *_: splash_chunk_attention(  # noqa: E731
            q, k, v, q_seg, kv_seg, mesh=model.mesh)
    else:
        attend_fn = functools.partial(attention, **dict(model.attention_options(), block_size=shape.chunk_block,
                                                        query_block=_query_block(shape), key_block=key_block))
    # The context is padded to whole blocks, so the chunk's own keys start a block: a block that
    # straddles context and chunk is visible to every query (20% more blocks for a 512-token chunk).
    written = shape.context_pages * shape.page_size
    pad_to = key_block if shape.chunk_attention == "blockwise" else shape.chunk_block
    ctx = -(-written // pad_to) * pad_to
    x_shards = shape.shards
    # Masks as data: the chunk's prompts are segments seg + 1 (padding -1 -> 0); a context slot carries
    # the segment of the prompt it continues and precedes every position.
    q_seg = c.seg + 1
    kv_seg = jnp.concatenate([jnp.pad(c.ctx_seg, ((0, 0), (0, ctx - written))), q_seg], axis=1)
    q_pos = jnp.broadcast_to(jnp.arange(shape.chunk, dtype=jnp.int32), (x_shards, shape.chunk))
    kv_pos = jnp.concatenate([jnp.full((x_shards, ctx), -1, jnp.int32), q_pos], axis=1)
    gather = jax.vmap(functools.partial(gather_pages, head_dim=model.config.head_dim), in_axes=(0, 0, None))

    def attend(q, k, v, state, layer):
        # Write first, then read the context: a read before the in-place write of the same pool made
        # XLA copy both pools at every layer. The chunk's own slots are masked out of the context.
        with jax.named_scope("kv_write"):
            kp, vp = _write(state, layer, k, v, c.pages, c.offsets, model.mesh, shape)
        context = lambda pool: jnp.pad(gather(pool, c.ctx_table, layer).astype(dtype),  # noqa: E731
                                       ((0, 0), (0, ctx - written), (0, 0), (0, 0)))
        keys = jnp.concatenate([context(kp), k], axis=1)
        values = jnp.concatenate([context(vp), v], axis=1)
        return attend_fn(q, keys, values, q_seg, kv_seg, q_pos, kv_pos), (kp, vp)

    def attend_ragged(q, k, v, state, layer):  # each prompt over its own pages, the chunk's tokens written first
        with jax.named_scope("kv_write"):
            state = _write(state, layer, k, v, c.pages, c.offsets, model.mesh, shape)
        out = ragged_attention.sharded_attention(q, state[0], c.seq_lens, c.seq_starts, c.seq_table, layer,
                                                 model.mesh)
        return out, state

    x = model.embed_tokens(c.tokens)
    _, pools = model.run_layers(x, *model.rope(c.positions), attend_ragged if shape.kv_pool == "ragged" else attend,
                                pools)
    return pools


def _admit(pools, slots: Slots, a: Admit, seed, shape: Shape):
    def copy_page(pool, src, dst):  # one shard's pool [KV, L, N, rows, width]: each admitted sample's partial page
        return pool.at[:, :, dst].set(pool[:, :, src])

    copy = ragged_attention.copy_pages if shape.kv_pool == "ragged" else copy_page
    pools = tuple(jax.vmap(copy)(pool, a.copy_src, a.copy_dst) for pool in pools)
    prompt_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(seed, a.prompt_index.reshape(-1))
    keys = jax.vmap(jax.random.fold_in)(prompt_keys, a.sample_index.reshape(-1))
    keys = jax.random.key_data(keys).reshape(slots.key.shape)
    pick = lambda new, old: jnp.where(a.admit.reshape(a.admit.shape + (1,) * (old.ndim - 2)), new, old)  # noqa: E731
    slots = Slots(token=pick(a.token, slots.token), pos=pick(a.pos, slots.pos), step=pick(a.step, slots.step),
                  remaining=pick(a.budget, slots.remaining), active=a.admit | slots.active,
                  table=pick(a.table, slots.table), key=pick(keys, slots.key), shared=pick(a.shared, slots.shared))
    return pools, slots


def _decode(model, pools, slots: Slots, temperature, top_p, admit_after, narrow_after, max_steps, shape: Shape):
    ps = shape.page_size
    x_shards, width = slots.token.shape
    rows = x_shards * width
    flat = lambda a: a.reshape(rows, *a.shape[2:])  # noqa: E731  [X, W, ...] -> the model's batch [X*W, ...]
    out_tok = jnp.zeros((shape.steps, x_shards, width), jnp.int32)
    out_lp = jnp.zeros((shape.steps, x_shards, width), jnp.float32)
    out_live = jnp.zeros((shape.steps, x_shards, width), bool)
    groups = None
    if shape.decode_group and shape.kv_pool == "split":  # the tables hold still through the round
        group = functools.partial(prefix_groups, page_size=ps, per_group=shape.decode_group)
        groups = jax.vmap(group)(slots.table, jnp.where(slots.active, slots.shared, 0))

    def cond(carry):
        i, _, slots, _, _, _, finished = carry
        stop = jnp.any(finished >= admit_after) | jnp.all(finished >= narrow_after)
        return (i < jnp.minimum(max_steps, shape.steps)) & jnp.any(slots.active) & ~stop

    def body(carry):
        i, pools, slots, out_tok, out_lp, out_live, finished = carry
        live, pos = slots.active, slots.pos
        page = jnp.where(live, jnp.take_along_axis(slots.table, (pos // ps)[..., None], axis=2)[..., 0], 0)
        lengths = jnp.where(live, pos + 1, 1)

        def attend(q, k, v, state, layer):
            unflat = lambda a: a.reshape(x_shards, width, *a.shape[2:])  # noqa: E731  [X*W, 1, ...] -> [X, W, ...]
            with jax.named_scope("kv_write"):
                state = _write(state, layer, unflat(k), unflat(v), page, pos % ps, model.mesh, shape)
            if shape.kv_pool == "ragged":  # one query a slot
                starts = jnp.broadcast_to(jnp.arange(width + 1, dtype=jnp.int32), (x_shards, width + 1))
                out = ragged_attention.sharded_attention(unflat(q), state[0], lengths, starts, slots.table, layer,
                                                         model.mesh)
            else:
                out = sharded_paged_attention(unflat(q), *state, lengths, slots.table, layer, model.mesh,
                                              groups=groups)
            return out.reshape(rows, 1, *out.shape[2:]), state

        x, pools = model.run_layers(model.embed_tokens(flat(slots.token)[:, None]), *model.rope(flat(pos)[:, None]),
                                    attend, pools)
        # vocab-sharded where the head is (tensor axis): left unconstrained, XLA gathered the whole head at
        # every step to compute replicated logits instead of gathering the logits
        with jax.named_scope("logits"):
            logits = constrain(model.logits_from_hidden(model.final_norm(x))[:, 0], ("batch", "vocab"), model.mesh)
        # each shard's own rows: XLA gathered every shard's rows to run top_k on them
        with jax.named_scope("sample"):
            token, logp = per_batch_shard(functools.partial(select, shape=shape), model.mesh, logits,
                                          flat(slots.key), flat(slots.step), jnp.full(rows, temperature),
                                          jnp.full(rows, top_p))
        token, logp = token.reshape(x_shards, width), logp.reshape(x_shards, width)
        remaining = slots.remaining - 1
        done = live & (is_eos(token, shape.eos_ids) | (remaining <= 0))
        step = live.astype(jnp.int32)
        slots = slots._replace(token=jnp.where(live, token, slots.token), pos=pos + step, step=slots.step + step,
                               remaining=jnp.where(live, remaining, slots.remaining), active=live & ~done)
        return (i + 1, pools, slots, out_tok.at[i].set(token), out_lp.at[i].set(logp), out_live.at[i].set(live),
                finished + jnp.sum(done, axis=1))

    carry = (jnp.asarray(0, jnp.int32), pools, slots, out_tok, out_lp, out_live, jnp.zeros((x_shards,), jnp.int32))
    _, pools, slots, out_tok, out_lp, out_live, _ = jax.lax.while_loop(cond, body, carry)
    return pools, slots, out_tok, out_lp, out_live


@functools.partial(jax.jit, static_argnames=("graphdef", "shape"), donate_argnames=("pools",))
def run_prefill(graphdef, weights, pools, chunk: Chunk, shape: Shape):
    """Each shard's chunk of prompt tokens into its pages; returns the pools."""
    model = nnx.merge(graphdef, weights)
    return _keep_layout(_prefill(model, pools, chunk, shape), pool_sharding(model.mesh, pools[0].shape, shape.kv_pool))


@functools.partial(jax.jit, static_argnames=("graphdef", "shape", "width"), donate_argnames=("pools", "slots"))
def run_round(graphdef, weights, pools, slots: Slots, admit: Admit, perm, seed_data, temperature, top_p,
              admit_after, narrow_after, max_steps, shape: Shape, width: int):
    """Admissions, then up to ``max_steps`` decode steps of each shard's first ``width`` slots; returns
    (pools, slots, tokens, log-probs, live [steps, X, width], active [X, S]).

    ``admit`` rows index the slots after ``perm`` [X, S]; slots from ``width`` on must be free."""
    model = nnx.merge(graphdef, weights)
    slots = jax.tree.map(lambda x: jnp.take_along_axis(x, perm.reshape(perm.shape + (1,) * (x.ndim - 2)), axis=1),
                         slots)
    pools, slots = _admit(pools, slots, admit, jax.random.wrap_key_data(seed_data), shape)
    head = jax.tree.map(lambda x: x[:, :width], slots)
    pools, head, *out = _decode(model, pools, head, temperature, top_p, admit_after, narrow_after, max_steps, shape)
    slots = jax.tree.map(lambda h, x: jnp.concatenate([h, x[:, width:]], axis=1), head, slots)
    mesh = model.mesh
    pools = _keep_layout(pools, pool_sharding(mesh, pools[0].shape, shape.kv_pool))
    slots = _keep_layout(slots, shard_sharding(mesh))
    if mesh is not None:  # every process reads the tokens whole (and schedules alike)
        out = jax.lax.with_sharding_constraint((*out, slots.active), NamedSharding(mesh, PartitionSpec()))
    else:
        out = (*out, slots.active)
    return (pools, slots, *out)


__all__ = ["Shape", "Slots", "Chunk", "Admit", "empty_slots", "pool_sharding", "shard_sharding", "run_prefill",
           "run_round", "select", "filter_logits", "is_eos", "POOL_AXES"]
