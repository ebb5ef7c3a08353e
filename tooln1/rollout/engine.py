"""The rollout engine: continuous batching over a paged KV cache with shared prompt pages.

Behind GRPO rollouts, validation, ``tooln1-eval`` and `tooln1.generate` (via `tooln1.rollout.sampling`).
The device runs *rounds* (`tooln1.rollout.programs`: a prefill chunk when there is one, then slot
admissions and up to ``steps_per_round`` decode steps of a fixed number of slots); this host loop
decides what each round does:

* **Batch shards.** On a mesh every batch shard (data x fsdp) has its own slots and its own page pool
  on its own devices (`_Shard`): a shard takes the rollout's next prompt when its slots want samples,
  and that prompt's G samples decode there. Device memory per slot is that of one shard's pages, so a
  mesh of X batch shards decodes X times the slots of one device in the same memory per device.
* **Slots.** Up to ``num_slots`` decode slots per shard (or as many as ``kv_memory_bytes`` of KV
  pages allow), fewer when its share of the samples needs fewer. A sample ends at EOS or its length
  cap and its slot takes the next pending sample, so a rollout of any size streams through the same
  memory and the same few compiled programs. Live slots are kept in front, and once fewer than half
  are live in every shard (the long tail, when nothing is pending) the round decodes only the front
  half, quarter, ... (``decode_widths`` compiled widths).
* **Prefill.** A round that prefills a chunk decodes one step only, so decoding slots ride along
  with the prompt work and new prompts reach their slots without waiting ``steps_per_round`` steps.
* **Pages.** A page pool with a page table per slot. A prompt (minus its last token) is prefilled
  once, in chunks packed from several prompts, into pages its G samples share (each copies only the
  partial last page); freed pages go back to the pool and a new owner never reads past what it wrote.
* **Prefix cache.** A full prompt page is also indexed by its content (a hash of every token up to
  its end), so a later prompt that starts the same way (the system prompt and tools of a chat
  template, the earlier turns of a conversation) takes those pages instead of prefilling them again.
  Cached pages nobody holds stay until the pool needs them (oldest first).
* **Exactness.** Sample ``g`` of prompt ``i`` draws its tokens from
  ``fold_in(fold_in(fold_in(seed, i), g), step)`` and attends only to its own pages, so it is the same
  for any slot count, page size, chunk size or prompt order (up to float rounding of different
  batch shapes).
* **Weights.** Decoding reads `inference_weights`: the parameters cast to the compute dtype and laid
  out tensor-parallel (replicated over the batch axes, where each shard decodes its own slots) in the
  platform's decoding layout (`tooln1.platform.decode_layout`), refreshed by `Engine.refresh` after an
  update.
* **Host overlap.** ``on_group(prompt_index, completions)`` runs on a worker thread as each prompt's
  G samples finish (a bounded queue), while the device keeps decoding.
* **Multi-turn continuation.** With ``continue_with``, a sample that ends its turn at an EOS id is a
  trajectory that may go on: ``continue_with(prompt_index, sample_index, turn_tokens)`` runs on a
  thread pool (a slow tool stalls no other slot) while the sample's pages stay held and its slot
  decodes others. The token ids it returns are appended as they are (token in, token out: nothing
  is re-templated), prefilled into the sample's own pages after the tokens it holds, as a chunk
  segment that continues its earlier pages, and the sample takes a slot again. A trajectory takes
  pages for its whole length cap when it starts, so a continuation never waits for pages. Such ids
  come a few dozen at a time, so a round prefills its chunk in the narrowest of a few compiled widths
  that holds it (`Engine.chunk_widths`).

Several processes: every process passes the same global prompt list (`tooln1.rollout.sampling` gathers
them) and runs the same schedule for every shard, so the device programs match; the tokens each
round returns are replicated.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections import OrderedDict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tooln1.models import ragged_attention
from tooln1.models.attention import SHARED_SEGMENTS
from tooln1.models.paged_attention import page_shape, reads_in_groups
from tooln1.platform.decode_layout import LAYER_LAYOUTS, DecodeLayout, decoding_copy
from tooln1.rollout.programs import (
    Admit,
    Chunk,
    Shape,
    empty_slots,
    pool_sharding,
    run_prefill,
    run_round,
    shard_sharding,
)
from tooln1.sharding import INFERENCE_RULES, batch_shards, state_shardings


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the engine uses memory. Hashable (part of `tooln1.rollout.sampling.SamplingConfig`)."""

    # Decode slots per batch shard: its share of the samples rounded up, at most num_slots (0: at most what
    # kv_memory_bytes of pages on a device hold, else max_slots)
    num_slots: int = 0
    kv_memory_bytes: int = 0
    max_slots: int = 64
    page_size: int = 16
    prefill_chunk: int = 512  # prompt tokens per shard and round
    # Query and key block of a chunk's attention: small blocks skip more of the mostly-masked context,
    # but each pair of blocks is a loop step, which a GPU may pay for more than it skips
    prefill_block: int = 256
    # Key block of chunk programs no wider than prefill_block (multi-turn's narrow chunks): their few dozen
    # queries a trajectory attend to long contexts, which fewer, larger key blocks run faster on a CPU
    narrow_key_block: int = 512
    steps_per_round: int = 16  # decode steps between host scheduling decisions
    decode_widths: int = 4  # compiled decode widths: all slots, then halves (the long tail decodes narrower)
    score_queue: int = 64  # finished groups waiting for on_group before decoding waits
    continue_workers: int = 16  # threads running generate's continue_with (each waiting tool holds one)
    # With continue_with, chunk programs this wide and every doubling below prefill_chunk: a round prefills
    # its chunk in the narrowest that holds it, since observations arrive a few dozen tokens at a time and
    # a chunk's cost grows with its width (0: always prefill_chunk)
    narrow_chunk: int = 128
    # With continue_with, a chunk's segments that attend to a context start at multiples of this many tokens,
    # its narrow programs' query blocks this wide: a block holds one continuation, which then scores its own
    # context only (0: packed)
    segment_align: int = 64
    prefix_cache: bool = True  # a prompt reuses the full pages of an earlier prompt with the same prefix
    # From prompts this long (a rollout's longest), decode attention reads a prompt's pages once a step for all
    # its samples decoding, not once a sample (the pure-JAX paged attention,
    # `tooln1.models.paged_attention.prefix_groups`); below it, a second pass over the slots' own pages
    # costs more than it saves (0: never)
    grouped_decode_from: int = 2048
    # The decoding copy's layers: "stacked", "per_layer" or "auto" (`tooln1.platform.decode_layout`)
    layer_layout: str = "auto"

    def __post_init__(self):
        for name in ("max_slots", "page_size", "prefill_chunk", "prefill_block", "narrow_key_block", "steps_per_round",
                     "decode_widths", "score_queue", "continue_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("narrow_chunk", "segment_align", "grouped_decode_from"):
            if getattr(self, name) < 0:
                raise ValueError(f"EngineConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.layer_layout not in LAYER_LAYOUTS:
            raise ValueError(f"EngineConfig.layer_layout {self.layer_layout!r}; expected one of {LAYER_LAYOUTS}")


STOPS = ("eos", "max_new_tokens", "max_turns", "max_length")


class Completion(NamedTuple):
    """A sample's tokens after its prompt: every turn the policy sampled and, between turns, the ids
    ``continue_with`` inserted."""

    tokens: np.ndarray  # [n] int32, ending with the EOS when the sample stopped at one
    logprobs: np.ndarray  # [n] float32, 0 for inserted tokens
    sampled: np.ndarray  # [n] bool, True for the tokens the policy sampled, False for inserted ones
    # Why it ended (one of STOPS): "eos" (an EOS id, and continue_with absent or returning None),
    # "max_new_tokens" (a turn reached it without an EOS), "max_turns" (the last allowed turn ended at an
    # EOS; continue_with is not called), "max_length" (the trajectory reached its length cap, or the ids
    # continue_with returned would leave no room for one more sampled token: they are not appended)
    stop: str


@dataclasses.dataclass
class _Prompt:
    index: int  # position in the caller's list
    key_index: int  # the prompt index its samples' keys are folded with
    ids: np.ndarray
    pages: list[int] = dataclasses.field(default_factory=list)
    keys: list[bytes] = dataclasses.field(default_factory=list)  # prefix-cache keys of its full pages
    prefilled: int = 0
    started: int = 0
    done: int = 0
    completions: list[Completion | None] = dataclasses.field(default_factory=list)  # by sample, as they end

    @property
    def prefill_len(self) -> int:  # the last token is each sample's first decode step
        return len(self.ids) - 1

    def page_keys(self, page_size: int) -> list[bytes]:
        """A key per full prefilled page: a digest of every token up to the page's end."""
        keys, digest = [], b""
        for start in range(0, self.prefill_len - page_size + 1, page_size):
            digest = hashlib.blake2b(digest + self.ids[start:start + page_size].tobytes(), digest_size=16).digest()
            keys.append(digest)
        return keys

    @property
    def ready(self) -> bool:
        return self.prefilled == self.prefill_len and bool(self.pages or self.prefill_len == 0)


@dataclasses.dataclass
class _Running:
    """A sample from its admission to its end: decoding in a slot, waiting on ``continue_with``, or
    having the ids it returned prefilled (then it reads to `_ChunkBuilder.add` like a prompt)."""

    prompt: _Prompt
    sample: int
    own: list[int]  # its private pages
    pages: list[int]  # its page table: the prompt's full pages, then its own
    budget: int  # tokens its current turn may sample
    tokens: list[np.ndarray] = dataclasses.field(default_factory=list)
    logprobs: list[np.ndarray] = dataclasses.field(default_factory=list)
    sampled: list[np.ndarray] = dataclasses.field(default_factory=list)
    turn: int = 1
    turn_from: int = 0  # index in its completion of its current turn's first token
    ids: np.ndarray | None = None  # prompt and completion, while its continuation is prefilled
    prefilled: int = 0  # positions of ``ids`` in its pages
    future: Future | None = None  # continue_with's answer while it waits

    @property
    def prefill_len(self) -> int:  # the last inserted token is the next turn's first decode step
        return len(self.ids) - 1

    def completion(self, stop: str) -> Completion:
        return Completion(np.concatenate(self.tokens), np.concatenate(self.logprobs), np.concatenate(self.sampled),
                          stop)


def inference_weights(model, layout: DecodeLayout) -> tuple[Any, Any]:
    """(graphdef, state) of ``model``'s decoding copy: float parameters in the compute dtype, in the
    platform's ``layout`` (`tooln1.platform.decode_layout`), tensor-parallel on a mesh."""
    copy, state = _copier(model, layout)
    if model.mesh is None and not layout.per_layer:
        return copy(state)  # shares the arrays where the dtype is already the compute dtype
    key = (copy.args[0], model.mesh, layout)
    if key not in _COPIES:  # one program: eager per-leaf slices are slow for a model of many leaves
        out_graphdef, abstract = _abstract_copy(copy, state)
        shardings = None if model.mesh is None else state_shardings(abstract, model.mesh, INFERENCE_RULES)
        _COPIES[key] = out_graphdef, jax.jit(lambda s: copy(s)[1], out_shardings=shardings)
    out_graphdef, fn = _COPIES[key]
    return out_graphdef, fn(state)


_COPIES: dict[Any, tuple[Any, Callable]] = {}  # one compiled copy per model structure, mesh and layout


def _copier(model, layout: DecodeLayout) -> tuple[functools.partial, Any]:
    """``copy(state) -> (graphdef, state)`` of ``model``'s decoding copy, and ``model``'s state."""
    graphdef, state = nnx.split(model)
    return functools.partial(decoding_copy, graphdef, layout=layout), state


def _abstract_copy(copy: Callable, state) -> tuple[Any, Any]:
    """The graphdef and abstract state ``copy`` makes of ``state`` (arrays or shapes), computing nothing."""
    out = {}

    def traced(s):
        out["graphdef"], copied = copy(s)
        return copied

    abstract = jax.eval_shape(traced, state)
    return out["graphdef"], abstract


class Engine:
    """Generates G samples per prompt token list; see the module docstring."""

    def __init__(self, model, config: EngineConfig = EngineConfig()):
        self.config, self.mesh, self.model_config = config, model.mesh, model.config
        self.layout = DecodeLayout.of(model.config, self.mesh, config.layer_layout)
        self.stats: dict[str, Any] = {}
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model))):
            # an abstract model (tooln1-fit: compile-only devices): the decoding copy's shapes only
            self.graphdef, abstract = _abstract_copy(*_copier(model, self.layout))
            shardings = (jax.tree.map(lambda _: None, abstract) if self.mesh is None
                         else state_shardings(abstract, self.mesh, INFERENCE_RULES))
            self.weights = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                        abstract, shardings)
            self.refresh_seconds = 0.0
        else:
            self.refresh_seconds = self.refresh(model)

    def refresh(self, model) -> float:
        """Take the decoding copy of ``model``'s current parameters; returns the seconds it took."""
        t0 = time.perf_counter()
        self.release()  # a split or cast copy is a second set of weights: drop the old one first
        self.graphdef, self.weights = inference_weights(model, self.layout)
        jax.block_until_ready(self.weights)
        return time.perf_counter() - t0

    def release(self) -> None:
        """Drop the decoding copy until the next `refresh` (the trainer: during the update, where a bf16
        or per-layer copy would sit beside the parameters, the optimizer state and the update's temp)."""
        self.weights = None

    # -- shapes and placement ------------------------------------------------------------------
    def _page_bytes(self) -> int:
        """Bytes of one KV page (keys and values, every layer) on one device."""
        c, tensor = self.model_config, 1 if self.mesh is None else self.mesh.shape.get("tensor", 1)
        kv_heads = c.num_kv_heads // tensor if c.num_kv_heads % tensor == 0 else c.num_kv_heads
        return 2 * c.num_layers * kv_heads * c.head_dim * self.config.page_size * self.layout.kv_dtype.itemsize

    def shape(self, sampling, samples: int, max_prompt_len: int, max_length: int | None = None) -> Shape:
        """The programs' shape for ``samples`` samples of prompts up to ``max_prompt_len`` tokens, each
        up to ``max_length`` tokens with its completion (default: the prompt and ``max_new_tokens``).
        Slots per batch shard: the shard's share of the samples rounded up (a power of two up to 8, then
        a multiple of 8: few programs, few idle slots), at most ``num_slots`` (or what
        ``kv_memory_bytes`` holds, else ``max_slots``)."""
        cfg = self.config
        shards = batch_shards(self.mesh)
        m = -(-(max_length or max_prompt_len + sampling.max_new_tokens) // cfg.page_size)
        limit = cfg.num_slots or cfg.max_slots
        if not cfg.num_slots and cfg.kv_memory_bytes:
            limit = max(1, cfg.kv_memory_bytes // (self._page_bytes() * (m + 2)))
        share = -(-samples // shards)
        wanted = max(1 << max(share - 1, 0).bit_length() if share <= 8 else -(-share // 8) * 8, self.layout.narrowest)
        slots = min(wanted, limit)
        eos = () if sampling.ignore_eos else tuple(sampling.eos_ids)
        return Shape(shards=shards, slots=int(slots), pages_per_seq=m, num_pages=1 + slots * (m + 1) + m,
                     page_size=cfg.page_size, chunk=cfg.prefill_chunk, chunk_block=cfg.prefill_block,
                     narrow_key_block=cfg.narrow_key_block,
                     chunk_attention=self.layout.prefill_attention,
                     steps=cfg.steps_per_round,
                     greedy=sampling.greedy, top_k=sampling.top_k, use_top_p=sampling.top_p < 1.0, eos_ids=eos,
                     kv_writes=self.layout.kv_writes, kv_pool=self.layout.kv_pool,
                     # a chunk feeds free slots: their samples' prompts, and a prompt begun or ended beside them
                     chunk_sequences=min(cfg.prefill_chunk, int(slots) + 2),
                     decode_group=sampling.num_samples if self._grouped_decode(sampling, max_prompt_len) else 0,
                     segment_align=self._segment_align(max_length is not None),
                     shared_context=self.layout.kv_pool == "split" and self.layout.prefill_attention == "blockwise")

    def _segment_align(self, multi_turn: bool) -> int:
        """`Shape.segment_align`: for multi-turn chunks of the blockwise or GPU prefill (a ragged pool's prefill
        reads a chunk's prompts as contiguous runs, and splash's blocks do not skip by segment)."""
        aligned = multi_turn and self.layout.kv_pool == "split" and self.layout.prefill_attention in (
            "blockwise", "pallas_gpu")
        return self.config.segment_align if aligned else 0

    def _grouped_decode(self, sampling, max_prompt_len: int) -> bool:
        c, start = self.model_config, self.config.grouped_decode_from
        return (0 < start <= max_prompt_len and sampling.num_samples > 1 and self.layout.kv_pool == "split"
                and reads_in_groups(c.head_dim, self.config.page_size, self.layout.kv_dtype, self.mesh))

    def _put(self, x, per_shard: bool = False):
        """A host array on the mesh: replicated, or with ``per_shard`` its leading [X] axis on the shards."""
        x = np.asarray(x)
        if self.mesh is None:
            return jnp.asarray(x)
        sharding = shard_sharding(self.mesh) if per_shard else NamedSharding(self.mesh, PartitionSpec())
        if self.mesh.is_multi_process:
            return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
        return jax.device_put(x, sharding)

    def _host(self, x) -> np.ndarray:
        return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))

    def _pool_shape(self, shape: Shape) -> tuple[int, ...]:
        """Each of the ``shape.num_pools`` pools' shape."""
        c = self.model_config
        if shape.kv_pool == "ragged":
            return shape.shards, *ragged_attention.pool_shape(c.num_layers, shape.num_pages, shape.page_size,
                                                               c.num_kv_heads, c.head_dim)
        return shape.shards, c.num_kv_heads, c.num_layers, shape.num_pages, *page_shape(shape.page_size, c.head_dim)

    def _init_state(self, shape: Shape, key_shape):
        pool = self._pool_shape(shape)
        make_pool = lambda: jnp.zeros(pool, self.layout.kv_dtype)  # noqa: E731
        make_slots = lambda: empty_slots(shape, key_shape)  # noqa: E731
        if self.mesh is None:
            # committed to the weights' device like the programs' outputs, or every program compiles twice:
            # once for the uncommitted first state and again for the committed state the next call passes
            device = next(iter(jax.tree.leaves(self.weights)[0].devices()))
            return jax.device_put((tuple(make_pool() for _ in range(shape.num_pools)), make_slots()), device)
        zeros = jax.jit(make_pool, out_shardings=pool_sharding(self.mesh, pool, shape.kv_pool))
        return (tuple(zeros() for _ in range(shape.num_pools)),
                jax.jit(make_slots, out_shardings=shard_sharding(self.mesh))())

    def widths(self, shape: Shape) -> list[int]:
        """The decode widths rounds compile for, widest first: all slots, then halving powers of two."""
        below = [1 << k for k in range(max(shape.slots - 1, 0).bit_length() - 1, -1, -1)]
        below = [w for w in below if w >= self.layout.narrowest]
        return [shape.slots] + below[:self.config.decode_widths - 1]

    def chunk_widths(self, shape: Shape, multi_turn: bool) -> list[int]:
        """The prefill chunk widths rounds compile for, narrowest first: with ``multi_turn``, ``narrow_chunk``
        doubled until ``shape.chunk``, then the chunk (each compiled when a round first needs it); a
        single-turn rollout prefills whole chunks of prompts, so one width."""
        narrow = self.config.narrow_chunk if multi_turn else 0
        below = [narrow << k for k in range(shape.chunk.bit_length())] if narrow else []
        return [w for w in below if w < shape.chunk] + [shape.chunk]

    def lower(self, sampling, samples: int, max_prompt_len: int, seed=None, program: str = "round"):
        """The lowered program `generate` runs for these sizes: the decode ``"round"`` at its widest, or
        the ``"prefill"`` of a chunk (compile it, read its memory). Nothing is placed on devices, so it
        lowers for compile-only devices and abstract models."""
        if program not in ("round", "prefill"):
            raise ValueError(f"Engine.lower: program {program!r}; expected 'round' or 'prefill'")
        shape = self.shape(sampling, samples, max_prompt_len)
        seed_data = np.asarray(jax.random.key_data(jax.random.key(0) if seed is None else seed))
        replicated = None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())
        shards = shard_sharding(self.mesh)
        struct = lambda x, sharding: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding)  # noqa: E731
        pool = self._pool_shape(shape)
        pools = (jax.ShapeDtypeStruct(pool, self.layout.kv_dtype,
                                      sharding=pool_sharding(self.mesh, pool, shape.kv_pool)),) * shape.num_pools
        if program == "prefill":
            chunk = _stack([_ChunkBuilder(shape)] * shape.shards, _ChunkBuilder.arrays)
            return run_prefill.lower(graphdef=self.graphdef, weights=self.weights, pools=pools,
                                     chunk=Chunk(*(struct(x, shards) for x in chunk)), shape=shape)
        slots = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shards),
                             jax.eval_shape(lambda: empty_slots(shape, seed_data.shape)))
        admit = _stack([_Admissions(shape)] * shape.shards, _Admissions.arrays)
        per_shard = np.zeros(shape.shards, np.int32)
        return run_round.lower(
            graphdef=self.graphdef, weights=self.weights, pools=pools, slots=slots,
            admit=Admit(*(struct(x, shards) for x in admit)),
            perm=struct(np.zeros((shape.shards, shape.slots), np.int32), shards),
            seed_data=struct(seed_data, replicated),
            temperature=struct(np.float32(1), replicated), top_p=struct(np.float32(1), replicated),
            admit_after=struct(per_shard, replicated), narrow_after=struct(per_shard, replicated),
            max_steps=struct(np.int32(1), replicated), shape=shape, width=shape.slots)

    # -- the host loop -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], sampling, seed, max_prompt_len: int | None = None,
                 on_group: Callable[[int, list[Completion]], Any] | None = None, indices: Sequence[int] | None = None,
                 continue_with: Callable[[int, int, np.ndarray], Sequence[int] | None] | None = None,
                 max_turns: int | None = None, max_length: int | None = None,
                 ) -> tuple[list[list[Completion]], list[Any]]:
        """``sampling.num_samples`` completions of each prompt (token lists, >= 1 token each), and the
        results of ``on_group(i, completions)`` (run on a worker thread as groups finish; [] without it).

        ``seed`` is a ``jax.random`` key; ``indices[i]`` (default ``i``) is prompt ``i``'s index in
        the sample keys, so a prompt's samples do not depend on where it sits in the list.
        ``max_prompt_len`` fixes the page-table width (default: the longest prompt).

        Multi-turn: ``continue_with(i, g, turn_tokens)`` is called (on a thread pool of
        ``continue_workers``) when sample ``g`` of prompt ``i`` ends a turn at an EOS id, with that
        turn's tokens; it returns the token ids to append (the environment's observation, templated,
        ending with the next assistant header) or None to end the trajectory. A trajectory has at most
        ``max_turns`` turns of up to ``max_new_tokens`` each and at most ``max_length`` tokens in all
        (prompt, turns and inserted ids), which also fixes the page-table width; both are required
        with ``continue_with``. ``Completion.stop`` says which cap ended a trajectory. Response token
        ``j`` (sampled or inserted) draws from ``fold_in(sample_key, j)``, so a trajectory does not
        depend on when its tools return."""
        if self.weights is None:
            raise RuntimeError("rollout engine: its weights were released; call Engine.refresh(model) first")
        g, r = sampling.num_samples, sampling.max_new_tokens
        indices = range(len(prompts)) if indices is None else indices
        queue = deque(_Prompt(i, int(k), np.asarray(p, np.int32), completions=[None] * g)
                      for i, (k, p) in enumerate(zip(indices, prompts)))
        longest = max(len(p.ids) for p in queue)
        turns = self._turns(continue_with, max_turns, max_length, longest)
        shape = self.shape(sampling, len(queue) * g, max(max_prompt_len or longest, longest),
                           max_length if turns else None)
        seed_data = np.asarray(jax.random.key_data(seed))
        pools, slots = self._init_state(shape, seed_data.shape)
        seed_dev = self._put(seed_data)
        temperature = self._put(np.float32(1.0 if sampling.greedy else sampling.temperature))
        top_p = self._put(np.float32(sampling.top_p))
        shards = [_Shard(shape, g, r, self.config.prefix_cache, turns) for _ in range(shape.shards)]
        results: list[list[Completion]] = [[] for _ in queue]
        scorer = _Scorer(on_group, self.config.score_queue)
        # *_context_tokens: the keys each prefilled token / live decode step attends to, summed (a roofline's
        # attention FLOPs and KV reads, `tooln1.preflight.roofline.rollout_work`)
        stats = dict(rounds=0, device_s=0.0, prefill_rounds_s=0.0, prefill_chunks=0, prefill_tokens=0, cached_tokens=0,
                     decode_steps=0, slot_steps=0, width_steps=0, tool_wait_s=0.0, prefill_context_tokens=0,
                     decode_context_tokens=0)
        chunk_widths = self.chunk_widths(shape, turns is not None)
        per_width = {w: [0, 0.0] for w in chunk_widths}  # chunks and seconds of the rounds that prefill them
        unfinished = len(queue)
        widths = self.widths(shape)

        def hand_on_finished() -> int:
            """Record and score the groups the shards finished; returns how many."""
            n = 0
            for shard in shards:
                for p, group in shard.finished:
                    results[p.index] = group
                    scorer.submit(p.index, group)
                    n += 1
                shard.finished.clear()
            return n

        t_start = time.perf_counter()
        try:
            while unfinished:
                for shard in shards:
                    shard.poll()
                unfinished -= hand_on_finished()
                if not unfinished:
                    break
                perm = [shard.compact() for shard in shards]
                chunks = [shard.fill(_ChunkBuilder(shape), queue) for shard in shards]
                admits = [shard.admit(_Admissions(shape)) for shard in shards]
                prefilled = sum(c.filled for c in chunks)
                occupied = [shard.occupied for shard in shards]
                if not prefilled and not any(a.any for a in admits) and not any(occupied):
                    waiting = [run.future for shard in shards for run in shard.waiting]
                    if not waiting:
                        raise RuntimeError(f"rollout engine: {shape.num_pages} KV pages cannot hold one more sample "
                                           f"(page_size {shape.page_size}, {shape.pages_per_seq} pages per sample); "
                                           "raise kv_memory_bytes or num_slots")
                    t0 = time.perf_counter()  # every slot is free (nothing to permute): wait for a tool
                    wait(waiting, return_when=FIRST_COMPLETED)
                    stats["tool_wait_s"] += time.perf_counter() - t0
                    continue
                width = min(w for w in widths if w >= max(max(occupied), 1))
                narrower = [w for w in widths if w < width]
                # stop early to admit a pending sample, or once a narrower width holds every shard's live slots
                pending = [shard.pending(queue) for shard in shards]
                never = width + 1
                admit_after = [1 if p else never for p in pending]
                narrow_after = ([max(n - narrower[0], 0) for n in occupied] if narrower and not any(pending)
                                else [never] * len(shards))
                t0 = time.perf_counter()
                if prefilled:
                    tokens = min(w for w in chunk_widths if w >= max(c.tokens_added for c in chunks))
                    arrays = _stack(chunks, functools.partial(_ChunkBuilder.arrays, width=tokens))
                    pools = run_prefill(graphdef=self.graphdef, weights=self.weights, pools=pools,
                                        chunk=Chunk(*(self._put(x, per_shard=True) for x in arrays)),
                                        shape=shape._replace(chunk=tokens))
                pools, slots, tok, lp, live, active = run_round(
                    graphdef=self.graphdef, weights=self.weights, pools=pools, slots=slots,
                    admit=Admit(*(self._put(x, per_shard=True) for x in _stack(admits, _Admissions.arrays))),
                    perm=self._put(np.asarray(perm, np.int32), per_shard=True), seed_data=seed_dev,
                    temperature=temperature, top_p=top_p, admit_after=self._put(np.asarray(admit_after, np.int32)),
                    narrow_after=self._put(np.asarray(narrow_after, np.int32)),
                    max_steps=self._put(np.int32(1 if prefilled else shape.steps)), shape=shape, width=width)
                tok, lp, live, active = (self._host(x) for x in (tok, lp, live, active))
                waited = time.perf_counter() - t0
                stats["device_s"] += waited
                if prefilled:  # a chunk's prefill and its one decode step; the rest of device_s is decoding
                    stats["prefill_rounds_s"] += waited
                    per_width[tokens][0] += 1
                    per_width[tokens][1] += waited
                steps = int(live.any((1, 2)).sum())
                stats["prefill_context_tokens"] += sum(c.attended() for c in chunks)
                stats["decode_context_tokens"] += sum(shard.attended(live[:, x]) for x, shard in enumerate(shards))
                stats.update(rounds=stats["rounds"] + 1, prefill_tokens=stats["prefill_tokens"] + prefilled,
                             prefill_chunks=stats["prefill_chunks"] + bool(prefilled),
                             decode_steps=stats["decode_steps"] + steps,
                             slot_steps=stats["slot_steps"] + int(live.sum()),
                             width_steps=stats["width_steps"] + steps * width * len(shards))
                for x, shard in enumerate(shards):
                    shard.collect(tok[:, x], lp[:, x], live[:, x], active[x])
                unfinished -= hand_on_finished()
        finally:
            if turns is not None:
                turns.close()
        stats["wall_s"] = time.perf_counter() - t_start
        stats["chunk_widths"] = {w: (n, seconds) for w, (n, seconds) in per_width.items() if n}
        stats["cached_tokens"] = sum(shard.cached_tokens for shard in shards)
        stats["evicted_pages"] = sum(shard.pages.evictions for shard in shards)
        stats["continuations"] = sum(shard.continuations for shard in shards)
        stats["inserted_tokens"] = sum(shard.inserted_tokens for shard in shards)
        outputs = scorer.close()
        stats["score_wait_s"] = time.perf_counter() - t_start - stats["wall_s"]
        stats.update(shards=shape.shards, slots=shape.slots, num_pages=shape.num_pages,
                     pages_per_seq=shape.pages_per_seq)
        self.stats = stats
        return results, outputs

    def _turns(self, continue_with, max_turns: int | None, max_length: int | None, longest: int) -> _Turns | None:
        """The multi-turn caps, checked, with ``continue_with``'s thread pool; None for one turn."""
        if continue_with is None:
            if max_turns is not None or max_length is not None:
                raise ValueError("generate: max_turns and max_length cap continue_with's turns; pass continue_with")
            return None
        if max_turns is None or max_length is None:
            raise ValueError("generate: continue_with needs max_turns (turns per trajectory) and max_length "
                             "(tokens per trajectory: prompt, turns and inserted ids)")
        if max_turns < 1:
            raise ValueError(f"generate: max_turns must be >= 1, got {max_turns}")
        if max_length <= longest:
            raise ValueError(f"generate: max_length {max_length} leaves no room for a response after the longest "
                             f"prompt ({longest} tokens)")
        if self.mesh is not None and self.mesh.is_multi_process:
            raise ValueError("generate: continue_with needs a single process (when tools return decides the "
                             "schedule, which every process must share)")
        return _Turns(continue_with, max_turns, max_length, self.config.continue_workers, self.model_config.vocab_size)


def _stack(builders, arrays: Callable) -> list[np.ndarray]:
    """The shards' host-built arrays, each stacked on a leading [X] axis."""
    return [np.stack(column) for column in zip(*(arrays(b) for b in builders))]


class _Shard:
    """One batch shard's part of a rollout: its slots, its page pool and the prompts it took.

    A shard takes the next prompt of the rollout's queue when its free slots want samples and its pool
    has the prompt's pages; the prompt's G samples then all decode in its slots, over its pages. With
    ``turns``, a sample whose turn ends at an EOS waits on ``continue_with`` (``waiting``), has the ids
    it returned prefilled (``continuing``) and takes a free slot again before any new sample
    (``resuming``)."""

    def __init__(self, shape: Shape, g: int, r: int, prefix_cache: bool, turns: _Turns | None):
        self.g, self.r, self.ps, self.prefix_cache, self.turns = g, r, shape.page_size, prefix_cache, turns
        self.m = shape.pages_per_seq
        self.eos = frozenset(shape.eos_ids)
        self.pages = _PagePool(shape.num_pages)
        self.owners: list[_Running | None] = [None] * shape.slots
        self.prompts: list[_Prompt] = []  # taken from the queue, in order
        self.prefill_ptr = self.admit_ptr = 0  # the first prompt not fully prefilled / not fully started
        self.waiting: list[_Running] = []
        self.continuing: deque[_Running] = deque()
        self.resuming: deque[_Running] = deque()
        self.finished: list[tuple[_Prompt, list[Completion]]] = []  # groups done, until the engine takes them
        self.cached_tokens = self.continuations = self.inserted_tokens = 0

    @property
    def occupied(self) -> int:
        return sum(o is not None for o in self.owners)

    def _private_need(self, p: _Prompt) -> int:
        """Pages a sample of ``p`` owns: its copy of the prompt's partial last page and its response
        (with turns, every position up to the length cap but the last, whose keys are never written)."""
        end = self.turns.max_length - 1 if self.turns else p.prefill_len + self.r
        return -(-end // self.ps) - p.prefill_len // self.ps

    def compact(self) -> list[int]:
        """Live slots to the front; returns the permutation (new slot i = old slot perm[i])."""
        perm = [s for s, o in enumerate(self.owners) if o is not None]
        perm += [s for s, o in enumerate(self.owners) if o is None]
        self.owners = [self.owners[s] for s in perm]
        return perm

    def pending(self, queue: deque) -> bool:
        """Whether a freed slot would take a sample now: a continued one, one of its prompts', or the
        queue's next."""
        return (bool(queue or self.continuing or self.resuming)
                or any(p.started < self.g for p in self.prompts[self.admit_ptr:]))

    def _take(self, p: _Prompt) -> bool:
        """Hold ``p``'s prompt pages (cached ones shared) if the pool also has one sample's own pages."""
        if not p.prefill_len:
            return True
        p.keys = p.page_keys(self.ps) if self.prefix_cache else []
        hits = self.pages.cached(p.keys)
        need = -(-p.prefill_len // self.ps) - len(hits)
        if self.pages.available(excluding=hits) < need + self._private_need(p):
            return False
        p.pages = self.pages.hold(hits) + self.pages.take(need)
        p.prefilled = len(hits) * self.ps
        self.cached_tokens += p.prefilled
        return True

    def fill(self, chunk: _ChunkBuilder, queue: deque) -> _ChunkBuilder:
        """This round's prefill chunk: continued samples' inserted ids first (they hold pages already),
        then the prompts it is prefilling, then new ones from ``queue`` only as far as its free slots
        want samples."""
        while self.continuing and chunk.room:
            run = self.continuing[0]
            if not chunk.add(run) or run.prefilled < run.prefill_len:
                return chunk
            self.resuming.append(self.continuing.popleft())
        waiting = sum(self.g - p.started for p in self.prompts[self.admit_ptr:self.prefill_ptr])
        demand = sum(o is None for o in self.owners) - waiting - len(self.continuing) - len(self.resuming)
        while chunk.room:
            if self.prefill_ptr == len(self.prompts):
                if demand <= 0 or not queue or not self._take(queue[0]):
                    break
                self.prompts.append(queue.popleft())
            p = self.prompts[self.prefill_ptr]
            if not chunk.add(p):
                break  # its context does not fit beside the chunk's other prompts' contexts
            self.pages.index(p.keys[:p.prefilled // self.ps], p.pages)
            if not p.ready:
                break
            self.prefill_ptr += 1
            demand -= self.g
        return chunk

    def admit(self, a: _Admissions) -> _Admissions:
        """Free slots take continued samples, then the next samples of prefilled prompts, as far as the
        pool has their pages."""
        for s, owner in enumerate(self.owners):
            if owner is not None:
                continue
            if self.resuming:
                run = self.resuming.popleft()
                a.set(s, token=run.ids[-1], pos=run.prefill_len, table=(run.pages + [0] * self.m)[:self.m],
                      copy=(0, 0), prompt=run.prompt.key_index, sample=run.sample, budget=run.budget,
                      step=run.turn_from, shared=run.prompt.prefill_len // self.ps)
                run.ids = None
                self.owners[s] = run
                continue
            while self.admit_ptr < len(self.prompts) and self.prompts[self.admit_ptr].started == self.g:
                self.admit_ptr += 1
            if self.admit_ptr >= self.prefill_ptr:
                break
            p = self.prompts[self.admit_ptr]
            if self.pages.available() < self._private_need(p):
                break
            own = self.pages.take(self._private_need(p))
            full = p.prefill_len // self.ps
            table = p.pages[:full] + own
            partial = (p.pages[full], own[0]) if p.prefill_len % self.ps else (0, 0)
            budget = min(self.r, self.turns.max_length - len(p.ids)) if self.turns else self.r
            a.set(s, token=p.ids[-1], pos=p.prefill_len, table=(table + [0] * self.m)[:self.m], copy=partial,
                  prompt=p.key_index, sample=p.started, budget=budget, step=0, shared=full)
            self.owners[s] = _Running(p, p.started, own, table, budget)
            p.started += 1
        return a

    def attended(self, live: np.ndarray) -> int:
        """Keys its slots' live decode steps [steps, width] of a round attended to, summed: a slot holding
        ``h`` tokens attends to ``h``, ``h + 1``, ... over its ``n`` steps."""
        total = 0
        for s, run in enumerate(self.owners):
            n = int(live[:, s].sum()) if run is not None else 0
            if n:
                held = len(run.prompt.ids) + sum(len(t) for t in run.tokens)
                total += n * held + n * (n - 1) // 2
        return total

    def collect(self, tok: np.ndarray, lp: np.ndarray, live: np.ndarray, active: np.ndarray) -> None:
        """Take a round's tokens [steps, width]; a sample whose turn ended hands its slot back and goes on
        to ``continue_with`` or ends."""
        for s, run in enumerate(self.owners):
            if run is None:
                continue
            run.tokens.append(tok[live[:, s], s])
            run.logprobs.append(lp[live[:, s], s])
            run.sampled.append(np.ones(len(run.tokens[-1]), bool))
            if active[s]:
                continue
            self.owners[s] = None
            tokens = np.concatenate(run.tokens)
            if int(tokens[-1]) not in self.eos:
                capped = self.turns and len(run.prompt.ids) + len(tokens) >= self.turns.max_length
                self._end(run, "max_length" if capped else "max_new_tokens")
            elif self.turns is None:
                self._end(run, "eos")
            elif run.turn == self.turns.max_turns:
                self._end(run, "max_turns")
            else:
                run.future = self.turns.pool.submit(self.turns.fn, run.prompt.index, run.sample,
                                                    tokens[run.turn_from:])
                self.waiting.append(run)

    def poll(self) -> None:
        """Samples whose ``continue_with`` answered: end them, or queue the ids it returned for prefill."""
        still = []
        for run in self.waiting:
            if not run.future.done():
                still.append(run)
                continue
            ids = self.turns.checked(run.future, run.prompt.index, run.sample)
            run.future = None
            if ids is None:
                self._end(run, "eos")
                continue
            held = len(run.prompt.ids) + sum(len(t) for t in run.tokens)
            length = held + len(ids)
            if length >= self.turns.max_length:  # no room to sample after them: not appended
                self._end(run, "max_length")
                continue
            run.tokens.append(ids)
            run.logprobs.append(np.zeros(len(ids), np.float32))
            run.sampled.append(np.zeros(len(ids), bool))
            # the turn's last token (an EOS) was sampled but never fed: its keys are prefilled with the ids'
            run.ids = np.concatenate([run.prompt.ids, *run.tokens])
            run.prefilled = held - 1
            run.budget = min(self.r, self.turns.max_length - length)
            run.turn, run.turn_from = run.turn + 1, length - len(run.prompt.ids)
            self.continuing.append(run)
            self.continuations += 1
            self.inserted_tokens += len(ids)
        self.waiting = still

    def _end(self, run: _Running, stop: str) -> None:
        """A trajectory ends: its completion, its pages back, and its group to ``finished`` once whole."""
        p = run.prompt
        p.completions[run.sample] = run.completion(stop)
        released = run.own
        p.done += 1
        if p.done == self.g:
            released = released + p.pages
            p.pages = []
            self.finished.append((p, p.completions))
        self.pages.release(released)


class _Turns:
    """A multi-turn rollout's caps, and the thread pool ``continue_with`` runs on."""

    def __init__(self, fn: Callable, max_turns: int, max_length: int, workers: int, vocab_size: int):
        self.fn, self.max_turns, self.max_length, self.vocab_size = fn, max_turns, max_length, vocab_size
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="tooln1-continue")

    def checked(self, future: Future, i: int, g: int) -> np.ndarray | None:
        """``continue_with``'s answer for sample ``g`` of prompt ``i``: None, or its ids as int32."""
        try:
            ids = future.result()
        except Exception as e:
            raise RuntimeError(f"rollout engine: continue_with(prompt {i}, sample {g}) raised {e!r}") from e
        if ids is None:
            return None
        arr = np.asarray(ids)
        if (arr.ndim != 1 or not len(arr) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0
                or arr.max() >= self.vocab_size):
            raise ValueError(f"rollout engine: continue_with(prompt {i}, sample {g}) returned {ids!r:.200}; expected "
                             f"None or a non-empty sequence of token ids below the vocabulary size {self.vocab_size}")
        return arr.astype(np.int32)

    def close(self) -> None:
        """Drop the tool calls not started (generate raised) and let the pool's threads end."""
        self.pool.shutdown(wait=False, cancel_futures=True)


class _PagePool:
    """Which KV pages are free, who holds each page, and which full prompt pages are cached by content.

    Page 0 is the scratch page and never handed out. A cached page that nobody holds is *idle*: it
    keeps its contents for a later prompt with the same prefix until `take` needs it (oldest first)."""

    def __init__(self, num_pages: int):
        self.free = list(range(num_pages - 1, 0, -1))
        self.holders: dict[int, int] = {}
        self.page_of: dict[bytes, int] = {}
        self.key_of: dict[int, bytes] = {}
        self.idle: OrderedDict[int, None] = OrderedDict()
        self.evictions = 0

    def available(self, excluding: Sequence[int] = ()) -> int:
        return len(self.free) + len(self.idle) - sum(page in self.idle for page in excluding)

    def cached(self, keys: Sequence[bytes]) -> list[int]:
        """The cached pages of the longest cached run of ``keys`` from the first."""
        hits = []
        for key in keys:
            if key not in self.page_of:
                break
            hits.append(self.page_of[key])
        return hits

    def hold(self, pages: list[int]) -> list[int]:
        for page in pages:
            self.idle.pop(page, None)
            self.holders[page] = self.holders.get(page, 0) + 1
        return list(pages)

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if self.free:
                page = self.free.pop()
            else:
                page, _ = self.idle.popitem(last=False)
                del self.page_of[self.key_of.pop(page)]
                self.evictions += 1
            out.append(page)
        return self.hold(out)

    def index(self, keys: Sequence[bytes], pages: Sequence[int]) -> None:
        """Cache ``pages[j]`` under ``keys[j]`` (pages whose tokens are all written, or will be by the
        round being built: any round that reads them runs after it)."""
        for key, page in zip(keys, pages):
            if key not in self.page_of and page not in self.key_of:
                self.page_of[key], self.key_of[page] = page, key

    def release(self, pages: Sequence[int]) -> None:
        """Drop one hold on each page; a page nobody holds becomes free, or idle if it is cached."""
        for page in pages:
            self.holders[page] -= 1
            if self.holders[page]:
                continue
            del self.holders[page]
            if page in self.key_of:
                self.idle[page] = None
            else:
                self.free.append(page)


class _ChunkBuilder:
    """Packs prompt tokens into one prefill chunk, at most ``Shape.chunk_sequences`` prompts; a prompt that
    continues from pages written before (an earlier chunk, or the prefix cache) brings those pages as its
    context, as many as the context table (`Shape.context_pages`) holds. With `Shape.shared_context` a page
    already in the table is not listed again: its slots' segment id becomes the set of the segments that
    continue it (`tooln1.models.attention`'s negative ids), so a query block holding two prompts that
    continue one cached prefix scores its keys once. Each prompt's page table and extent are listed too
    (what a ragged pool's prefill reads)."""

    def __init__(self, shape: Shape):
        c, self.m, self.ps, self.align = shape.chunk, shape.context_pages, shape.page_size, shape.segment_align
        self.columns: dict[int, int] | None = {} if shape.shared_context else None  # a listed page's column
        self.tokens, self.positions, self.pages, self.offsets = (np.zeros(c, np.int32) for _ in range(4))
        self.seg = np.full(c, -1, np.int32)
        self.ctx_table, self.ctx_seg = np.zeros(self.m, np.int32), np.zeros(self.m * self.ps, np.int32)
        r = shape.chunk_sequences
        self.seq_table = np.zeros((r, shape.pages_per_seq), np.int32)
        self.seq_lens, self.seq_starts = np.zeros(r, np.int32), np.zeros(r + 1, np.int32)
        self.ctx_pages, self.tokens_added, self.segments = 0, 0, 0  # tokens_added: where the last segment ends
        self.filled = 0  # the segments' tokens (without the gaps that align them)
        self.last_had_context = False

    def start(self, has_context: bool) -> int:
        """Where the next segment starts: after the last, at a multiple of ``Shape.segment_align`` when it or the
        last one attends to a context (a query block then scores one context: blocks of prompts that start
        here see nothing before them, so they pack)."""
        if self.align and (has_context or self.last_had_context):
            return -(-self.tokens_added // self.align) * self.align
        return self.tokens_added

    @property
    def room(self) -> int:
        return len(self.tokens) - self.tokens_added

    def attended(self) -> int:
        """Keys its tokens attend to, summed (a token at position ``p`` attends to ``p + 1``)."""
        return int((self.positions[self.seg >= 0] + 1).sum())

    def add(self, p: _Prompt) -> bool:
        """Add as much of ``p`` as fits; False if its context or another prompt does not fit (nothing added)."""
        if p.prefilled == p.prefill_len:
            return True
        start = self.start(p.prefilled > 0)
        n = min(len(self.tokens) - start, p.prefill_len - p.prefilled)
        if n <= 0 or self.segments == len(self.seq_lens):
            return False  # no room from its (aligned) start, or no segment left
        if p.prefilled and not self._add_context(p.pages[:-(-p.prefilled // self.ps)], p.prefilled):
            return False
        self.last_had_context = p.prefilled > 0
        sl = slice(start, start + n)
        pos = np.arange(p.prefilled, p.prefilled + n)
        self.tokens[sl], self.positions[sl], self.seg[sl] = p.ids[pos], pos, self.segments
        self.pages[sl], self.offsets[sl] = np.asarray(p.pages)[pos // self.ps], pos % self.ps
        p.prefilled += n
        self.tokens_added = sl.stop
        self.filled += n
        self.seq_table[self.segments, :len(p.pages)] = p.pages
        self.seq_lens[self.segments] = p.prefilled
        self.seq_starts[self.segments + 1:] = self.tokens_added
        self.segments += 1
        return True

    def _add_context(self, pages, seen: int) -> bool:
        """List the next segment's context ``pages`` (its first ``seen`` slots), or False if they do not fit."""
        bit = self.segments < SHARED_SEGMENTS and self.columns is not None  # named by a bit of a shared id
        new = [page for page in pages if not (bit and page in self.columns)]
        if self.ctx_pages + len(new) > self.m:
            return False
        for j, page in enumerate(pages):
            if bit and page in self.columns:
                column = self.columns[page]
            else:
                column, self.ctx_pages = self.ctx_pages, self.ctx_pages + 1
                self.ctx_table[column] = page
                if bit:
                    self.columns[page] = column
            slots = slice(column * self.ps, column * self.ps + min(self.ps, seen - j * self.ps))
            # a negative id: the negated set of the chunk's segments that see the slot, bit r for segment r
            self.ctx_seg[slots] = -(-self.ctx_seg[slots] | 1 << self.segments) if bit else self.segments + 1
        return True

    def arrays(self, width: int | None = None):
        """The chunk's arrays, its tokens cut to ``width`` (a narrower chunk program; they are packed in front)."""
        w = slice(width)
        return (self.tokens[w], self.positions[w], self.seg[w], self.pages[w], self.offsets[w], self.ctx_table,
                self.ctx_seg, self.seq_table, self.seq_lens, self.seq_starts)


class _Admissions:
    """Slot admissions of one round."""

    def __init__(self, shape: Shape):
        s, m = shape.slots, shape.pages_per_seq
        self.admit = np.zeros(s, bool)
        (self.token, self.pos, self.src, self.dst, self.prompt, self.sample, self.budget, self.step,
         self.shared) = (np.zeros(s, np.int32) for _ in range(9))
        self.table = np.zeros((s, m), np.int32)

    @property
    def any(self) -> bool:
        return bool(self.admit.any())

    def set(self, s, *, token, pos, table, copy, prompt, sample, budget, step, shared) -> None:
        self.admit[s], self.token[s], self.pos[s], self.table[s] = True, token, pos, table
        (self.src[s], self.dst[s]), self.prompt[s], self.sample[s], self.budget[s] = copy, prompt, sample, budget
        self.step[s], self.shared[s] = step, shared

    def arrays(self):
        return (self.admit, self.token, self.pos, self.table, self.src, self.dst, self.prompt, self.sample,
                self.budget, self.step, self.shared)


class _Scorer:
    """Runs ``fn(i, group)`` on one worker thread, at most ``bound`` groups queued."""

    def __init__(self, fn, bound: int):
        self.fn, self.bound = fn, bound
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tooln1-score") if fn else None
        self.futures: list[tuple[int, Future]] = []

    def submit(self, i: int, group) -> None:
        if self.pool is None:
            return
        pending = [f for _, f in self.futures if not f.done()]
        if len(pending) >= self.bound:
            pending[0].result()
        self.futures.append((i, self.pool.submit(self.fn, i, list(group))))

    def close(self) -> list[Any]:
        if self.pool is None:
            return []
        try:
            out = dict((i, f.result()) for i, f in self.futures)
        finally:
            self.pool.shutdown()
        return [out[i] for i in sorted(out)]


__all__ = ["Engine", "EngineConfig", "Completion", "STOPS", "inference_weights"]
