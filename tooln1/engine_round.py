"""The rollout engine's device program: a *round* = one prefill chunk, slot admissions, then up to
``max_steps`` decode steps of the first ``width`` slots over the paged KV cache (see `tooln1.engine`
for the host side).

Its shapes depend only on the engine's shape (slots, pages, chunk, steps) and the decode width, never
on how many prompts a rollout has: a few compiled programs (one per width) serve any batch.

* **Prefill chunk**: ``chunk`` prompt tokens packed from one or more prompts (segment ids). A prompt
  that continues pages written before (an earlier chunk, or pages reused from the prefix cache) also
  attends to those, gathered through the chunk's context table (two samples' worth of pages, shared
  by its segments). Their keys/values go to the prompt's pages. A prompt's last token is not prefilled:
  each sample feeds it as its first decode step, so prompt pages stay read-only and shared.
* **Admission**: a slot takes a sample: its page table (the prompt's full pages shared, a private
  copy of the prompt's partial last page, private pages for the response), the prompt's last token
  and the sample key ``fold_in(fold_in(seed, prompt_index), sample_index)``.
* **Compaction**: ``perm`` reorders the slots first (slot ``i`` becomes old slot ``perm[i]``), so the
  host can pack the live slots in front and decode a narrower ``width`` when few are left: the
  long tail of a rollout then costs what its live samples cost, not what all slots cost.
* **Decode**: each live slot writes its token's keys/values to its own page and attends over its own
  first ``pos + 1`` slots (ragged paged attention); the next token uses ``fold_in(sample_key, step)``.
  The loop stops after ``max_steps`` (<= ``steps``) steps, when no slot is live, or once
  ``min_finished`` slots ended (so the host can hand their slots to pending samples, or narrow the width).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tooln1.models.attention import attention
from tooln1.models.paged_attention import gather_pages, ragged_paged_attention, write_pages


PREFILL_BLOCK = 256


class Shape(NamedTuple):
    """Everything static about a round program."""

    slots: int
    pages_per_seq: int  # M, page-table width
    num_pages: int  # N, pool size (page 0 = scratch)
    page_size: int
    chunk: int
    steps: int
    greedy: bool
    top_k: int
    use_top_p: bool
    eos_ids: tuple[int, ...]

    @property
    def context_pages(self) -> int:
        """Width of a prefill chunk's context table: two samples' pages, so a chunk packs a prompt that
        continues a long cached prefix beside the tail of another one."""
        return 2 * self.pages_per_seq


class Slots(NamedTuple):
    """Per-slot decode state [S] (device)."""

    token: jax.Array  # int32, the token to feed next
    pos: jax.Array  # int32, its position
    step: jax.Array  # int32, index of the response token it produces
    remaining: jax.Array  # int32, response tokens still allowed
    active: jax.Array  # bool
    table: jax.Array  # [S, M] int32 page table
    key: jax.Array  # [S, *key_data] uint32 sample key data


class Chunk(NamedTuple):
    """One prefill chunk [C] (host-built)."""

    has: jax.Array  # bool scalar: any real token
    tokens: jax.Array
    positions: jax.Array
    seg: jax.Array  # segment within the chunk, -1 = padding
    pages: jax.Array  # destination page per token (0 for padding)
    offsets: jax.Array
    ctx_table: jax.Array  # [2M] the context pages of the chunk's prompts that continue earlier pages
    ctx_seg: jax.Array  # [2M * page_size] segment + 1 of each context slot (0 = unused)


class Admit(NamedTuple):
    """Slot admissions [S] (host-built); rows with ``admit`` False are ignored."""

    admit: jax.Array
    token: jax.Array
    pos: jax.Array
    table: jax.Array  # [S, M]
    copy_src: jax.Array  # page to copy into copy_dst (0 -> 0 when nothing to copy)
    copy_dst: jax.Array
    prompt_index: jax.Array
    sample_index: jax.Array
    budget: jax.Array


def empty_slots(shape: Shape, key_data_shape: tuple[int, ...]) -> Slots:
    s, m = shape.slots, shape.pages_per_seq
    z = lambda: jnp.zeros((s,), jnp.int32)  # noqa: E731  (distinct buffers: the slots are donated)
    return Slots(z(), z(), z(), z(), jnp.zeros((s,), bool), jnp.zeros((s, m), jnp.int32),
                 jnp.zeros((s, *key_data_shape), jnp.uint32))


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
    """Next token [N] and ``log_softmax(logits / T)`` of it [N] (unfiltered; T = 0: plain log_softmax)."""
    logits = logits.astype(jnp.float32)
    if shape.greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        logp = jax.nn.log_softmax(scaled, axis=-1)
        filtered = filter_logits(scaled, shape.top_k, shape.use_top_p, top_p)
        step_keys = jax.vmap(jax.random.fold_in)(keys, steps)
        token = jax.vmap(jax.random.categorical)(step_keys, filtered).astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def is_eos(token: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(token.shape, bool)
    return jnp.any(token[..., None] == jnp.asarray(eos_ids, jnp.int32), axis=-1)


# -- the three phases -----------------------------------------------------------------------
def _prefill(model, pools, c: Chunk, shape: Shape):
    dtype = jnp.dtype(model.config.dtype)
    # Always blockwise (the kernels need square self-attention); small blocks skip more of the
    # mostly-masked context: 3x faster than 512 on a CPU for a 512-token chunk over ~1.5k slots.
    block = min(model.config.attention_block_size, PREFILL_BLOCK)
    attend_kw = dict(model.attention_options(), block_size=block)
    # The context is padded to whole blocks, so the chunk's own keys start a block: a block that
    # straddles context and chunk is visible to every query (20% more blocks for a 512-token chunk).
    written = shape.context_pages * shape.page_size
    ctx = -(-written // block) * block
    # Masks as data: the chunk's prompts are segments seg + 1 (padding -1 -> 0); a context slot carries
    # the segment of the prompt it continues and precedes every position.
    q_seg = (c.seg + 1)[None]
    kv_seg = jnp.concatenate([jnp.pad(c.ctx_seg, (0, ctx - written)), c.seg + 1])[None]
    q_pos = jnp.arange(shape.chunk, dtype=jnp.int32)[None]
    kv_pos = jnp.concatenate([jnp.full((ctx,), -1, jnp.int32), q_pos[0]])[None]

    def attend(q, k, v, state, layer):
        # Write first, then read the context: a read before the in-place write of the same pool made
        # XLA copy both pools at every layer. The chunk's own slots are masked out of the context.
        kp = write_pages(state[0], layer, k[0], c.pages, c.offsets)
        vp = write_pages(state[1], layer, v[0], c.pages, c.offsets)
        context = lambda pool: jnp.pad(gather_pages(pool, c.ctx_table, layer).astype(dtype),  # noqa: E731
                                       ((0, ctx - written), (0, 0), (0, 0)))
        keys = jnp.concatenate([context(kp), k[0]])[None]
        values = jnp.concatenate([context(vp), v[0]])[None]
        return attention(q, keys, values, q_seg, kv_seg, q_pos, kv_pos, **attend_kw), (kp, vp)

    x = model.embed_tokens(c.tokens[None])
    _, pools = model.run_layers(x, *model.rope(c.positions[None]), attend, pools)
    return pools


def _admit(pools, slots: Slots, a: Admit, seed):
    kp, vp = pools
    kp = kp.at[:, :, a.copy_dst].set(kp[:, :, a.copy_src])
    vp = vp.at[:, :, a.copy_dst].set(vp[:, :, a.copy_src])
    prompt_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(seed, a.prompt_index)
    keys = jax.random.key_data(jax.vmap(jax.random.fold_in)(prompt_keys, a.sample_index))
    pick = lambda new, old: jnp.where(a.admit.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
    slots = Slots(token=pick(a.token, slots.token), pos=pick(a.pos, slots.pos), step=pick(0, slots.step),
                  remaining=pick(a.budget, slots.remaining), active=a.admit | slots.active,
                  table=pick(a.table, slots.table), key=pick(keys, slots.key))
    return (kp, vp), slots


def _decode(model, pools, slots: Slots, temperature, top_p, min_finished, max_steps, shape: Shape):
    ps, width = shape.page_size, slots.token.shape[0]
    out_tok = jnp.zeros((shape.steps, width), jnp.int32)
    out_lp = jnp.zeros((shape.steps, width), jnp.float32)
    out_live = jnp.zeros((shape.steps, width), bool)

    def cond(carry):
        i, _, slots, _, _, _, finished = carry
        return (i < jnp.minimum(max_steps, shape.steps)) & jnp.any(slots.active) & (finished < min_finished)

    def body(carry):
        i, pools, slots, out_tok, out_lp, out_live, finished = carry
        live, pos = slots.active, slots.pos
        page = jnp.where(live, jnp.take_along_axis(slots.table, (pos // ps)[:, None], axis=1)[:, 0], 0)
        lengths = jnp.where(live, pos + 1, 1)

        def attend(q, k, v, state, layer):
            kp, vp = state
            kp = write_pages(kp, layer, k[:, 0], page, pos % ps)
            vp = write_pages(vp, layer, v[:, 0], page, pos % ps)
            out = ragged_paged_attention(q[:, 0], kp, vp, lengths, slots.table, layer=layer)
            return out[:, None], (kp, vp)

        x, pools = model.run_layers(model.embed_tokens(slots.token[:, None]), *model.rope(pos[:, None]),
                                    attend, pools)
        logits = model.logits_from_hidden(model.final_norm(x))[:, 0]
        keys = jax.random.wrap_key_data(slots.key)
        token, logp = select(logits, keys, slots.step, temperature, top_p, shape)
        remaining = slots.remaining - 1
        done = live & (is_eos(token, shape.eos_ids) | (remaining <= 0))
        step = live.astype(jnp.int32)
        slots = slots._replace(token=jnp.where(live, token, slots.token), pos=pos + step, step=slots.step + step,
                               remaining=jnp.where(live, remaining, slots.remaining), active=live & ~done)
        return (i + 1, pools, slots, out_tok.at[i].set(token), out_lp.at[i].set(logp), out_live.at[i].set(live),
                finished + jnp.sum(done))

    carry = (jnp.asarray(0, jnp.int32), pools, slots, out_tok, out_lp, out_live, jnp.asarray(0, jnp.int32))
    _, pools, slots, out_tok, out_lp, out_live, _ = jax.lax.while_loop(cond, body, carry)
    return pools, slots, out_tok, out_lp, out_live


@functools.partial(jax.jit, static_argnames=("graphdef", "shape", "width"), donate_argnames=("pools", "slots"))
def run_round(graphdef, weights, pools, slots: Slots, chunk: Chunk, admit: Admit, perm, seed_data, temperature,
              top_p, min_finished, max_steps, shape: Shape, width: int):
    """One round; returns (pools, slots, tokens [steps, width], log-probs [steps, width], live [steps, width]).

    ``admit`` rows index the slots after ``perm``; slots from ``width`` on must be free."""
    model = nnx.merge(graphdef, weights)
    pools = jax.lax.cond(chunk.has, lambda p: _prefill(model, p, chunk, shape), lambda p: p, pools)
    slots = jax.tree.map(lambda x: x[perm], slots)
    pools, slots = _admit(pools, slots, admit, jax.random.wrap_key_data(seed_data))
    head = jax.tree.map(lambda x: x[:width], slots)
    pools, head, *out = _decode(model, pools, head, temperature, top_p, min_finished, max_steps, shape)
    slots = jax.tree.map(lambda h, x: jnp.concatenate([h, x[width:]]), head, slots)
    if model.mesh is not None:  # every process reads the slots and tokens whole (and schedules alike)
        slots, out = jax.lax.with_sharding_constraint((slots, out), NamedSharding(model.mesh, PartitionSpec()))
    return (pools, slots, *out)


__all__ = ["Shape", "Slots", "Chunk", "Admit", "empty_slots", "run_round", "select", "filter_logits", "is_eos"]
