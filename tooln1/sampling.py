"""Jitted group sampler: one prefill per prompt, G samples per prompt decoded over a KV cache.

GRPO's rollouts come from here (DESIGN §3, §8). For ``B`` prompts and ``G = num_samples``:

1. Host: the prompts are compacted and **left-padded** to a bucketed length ``P`` (``prompt_buckets``)
   and the batch to a bucketed size, so new batches of similar size reuse the compiled program.
2. Device, one jitted program: a single prefill of the ``B`` prompts writes their keys/values into a
   preallocated cache of ``P + R`` slots (``R = max_new_tokens``); the cache rows and the last-position
   logits are repeated ``G`` times (``jnp.repeat``: row ``b*G + g`` is sample ``g`` of prompt ``b``);
   then a ``lax.while_loop`` decodes one token per step for all ``B*G`` rows, stopping each row at its
   first EOS (any id in ``eos_ids``) and the whole loop when every row is done.
3. Sampling: ``temperature == 0`` is greedy (argmax); otherwise logits/T, then top-k (``top_k > 0``),
   then top-p (``top_p < 1``, on the renormalised top-k distribution; the HF order), then a categorical
   draw with a per-row, per-step key ``fold_in(fold_in(seed_key, row), step)``; the same seed gives the
   same outputs, also on a mesh.
4. ``logprobs`` are ``log_softmax(logits / T)`` of the sampled token over the *unfiltered* vocabulary
   (``T = 0``: ``log_softmax(logits)``), as the trainer recomputes them (DESIGN §8). ``mask`` is 1 up to
   and including the first EOS, 0 after; tokens after EOS are ``pad_id`` with log-prob 0.

On a mesh (``model.mesh``), the batch is split over ``("data", "fsdp")`` and heads over ``"tensor"`` by
the model's own sharding annotations; the batch is padded to a multiple of the batch shards.

Multi-host: when the mesh spans several processes, each process passes only *its* prompts (as the
data iterator hands them out) and every process must call `sample` together. The processes agree on
the padded prompt length and the padded per-process batch (the largest of all processes; counts may
differ); the global batch is the processes' padded batches concatenated in process order, so a seed
gives the same samples as one process holding all prompts whenever no process needs padding rows.
The outputs are then global arrays with those padding rows; `SampleOutput.local` returns this
process's rows as numpy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from tooln1.models.decoder import KVCache, default_positions

DEFAULT_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """What to sample. Hashable; only the fields marked *static* change the compiled program."""

    num_samples: int = 1  # G, samples per prompt (static)
    max_new_tokens: int = 64  # R, response length (static)
    temperature: float = 1.0  # 0 = greedy (greedy vs not is static; the value is traced)
    top_p: float = 1.0  # nucleus; 1 = off (on/off static, value traced)
    top_k: int = 0  # 0 = off (static)
    eos_ids: tuple[int, ...] = ()  # any of these ends a response (static)
    pad_id: int = 0  # written after EOS
    ignore_eos: bool = False  # decode exactly max_new_tokens (benchmarks; static)
    prompt_buckets: tuple[int, ...] = DEFAULT_PROMPT_BUCKETS  # allowed padded prompt lengths
    batch_buckets: bool = True  # pad the batch to a power of two (fewer recompiles)

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"SamplingConfig.num_samples must be >= 1, got {self.num_samples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
        object.__setattr__(self, "prompt_buckets", tuple(sorted(int(b) for b in self.prompt_buckets)))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class SampleOutput(NamedTuple):
    tokens: jax.Array  # [B*G, R] int32; row b*G+g = sample g of prompt b
    logprobs: jax.Array  # [B*G, R] float32
    mask: jax.Array  # [B*G, R] int32, 1 up to and including the first EOS
    prompt_ids: jax.Array  # [B*G, P] int32, left-padded, P = bucketed prompt length
    prompt_mask: jax.Array  # [B*G, P] int32
    num_local: int | None = None  # rows of this process's own prompts (B_local*G); None = all rows

    @property
    def lengths(self) -> jax.Array:
        return self.mask.sum(-1)

    def local(self) -> "SampleOutput":
        """This process's rows as numpy, in the order of the prompts it passed, padding rows dropped.

        Single-process the arrays already hold just the caller's rows, so this is ``np.asarray`` of
        each; on a mesh spanning several processes the global arrays cannot be read whole.
        """
        arrays = (self.tokens, self.logprobs, self.mask, self.prompt_ids, self.prompt_mask)
        return SampleOutput(*(_process_rows(x)[:self.num_local] for x in arrays), num_local=self.num_local)


class _Static(NamedTuple):
    """The part of the configuration that shapes the compiled program."""

    num_samples: int
    max_new_tokens: int
    greedy: bool
    top_k: int
    use_top_p: bool
    eos_ids: tuple[int, ...]
    pad_id: int
    ignore_eos: bool


# -- token selection ------------------------------------------------------------------------
def _filter_logits(scaled: jax.Array, top_k: int, use_top_p: bool, top_p: jax.Array) -> jax.Array:
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


def _select(logits, keys, step, temperature, top_p, st: _Static):
    """Next token [N] and its log-prob [N] from logits [N, V] (float32)."""
    logits = logits.astype(jnp.float32)
    if st.greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        logp = jax.nn.log_softmax(scaled, axis=-1)
        filtered = _filter_logits(scaled, st.top_k, st.use_top_p, top_p)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
        token = jax.vmap(jax.random.categorical)(step_keys, filtered).astype(jnp.int32)
    chosen = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    return token, chosen


def _is_eos(token: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(token.shape, bool)
    return jnp.any(token[..., None] == jnp.asarray(eos_ids, jnp.int32), axis=-1)


def response_mask(tokens: jax.Array, eos_ids: Sequence[int]) -> jax.Array:
    """1 up to and including the first EOS of each row, 0 after (all 1 when there is none)."""
    hit = _is_eos(jnp.asarray(tokens, jnp.int32), tuple(int(i) for i in eos_ids)).astype(jnp.int32)
    return ((jnp.cumsum(hit, axis=-1) - hit) == 0).astype(jnp.int32)


def response_mask_np(tokens, eos_ids: Sequence[int]) -> np.ndarray:
    """Numpy twin of `response_mask` (host-side, no compilation)."""
    tokens = np.asarray(tokens)
    hit = np.isin(tokens, np.asarray(list(eos_ids), dtype=tokens.dtype)).astype(np.int32)
    return ((np.cumsum(hit, axis=-1) - hit) == 0).astype(np.int32)


# -- the jitted core ------------------------------------------------------------------------
def _repeat_rows(x: jax.Array, g: int, axis: int) -> jax.Array:
    return x if g == 1 else jnp.repeat(x, g, axis=axis)


def _prefill(model, prompt_ids, prompt_mask, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Write the prompts into the cache; return only the last position's logits [B, V].

    ``last_only`` sends just the last hidden state through the LM head: XLA does not simplify
    "project every position, then slice" (~280 GFLOP and a 600 MB buffer for 8 prompts of 128 tokens
    at the Qwen2.5-0.5B shape).
    """
    logits, cache = model.decode_step(prompt_ids, default_positions(prompt_mask), cache,
                                      attention_mask=prompt_mask, last_only=True)
    return logits[:, 0], cache


def _sample_core(graphdef, state, prompt_ids, prompt_mask, rng, temperature, top_p, st: _Static):
    model = nnx.merge(graphdef, state)
    b, p = prompt_ids.shape
    g, r = st.num_samples, st.max_new_tokens
    n = b * g

    # One prefill per prompt into a cache with room for the whole response.
    cache = model.init_cache(b, p + r)
    last, cache = _prefill(model, prompt_ids, prompt_mask, cache)
    # ... whose cache serves the G samples of that prompt (groups contiguous).
    cache = KVCache(k=_repeat_rows(cache.k, g, 1), v=_repeat_rows(cache.v, g, 1),
                    mask=_repeat_rows(cache.mask, g, 0), index=cache.index)
    last = _repeat_rows(last, g, 0)
    position = _repeat_rows(jnp.sum(prompt_mask, axis=-1).astype(jnp.int32), g, 0)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(n, dtype=jnp.uint32))

    token, logp = _select(last, keys, 0, temperature, top_p, st)
    tokens = jnp.full((n, r), st.pad_id, jnp.int32).at[:, 0].set(token)
    logprobs = jnp.zeros((n, r), jnp.float32).at[:, 0].set(logp)
    done = jnp.zeros((n,), bool) if st.ignore_eos else _is_eos(token, st.eos_ids)

    def cond(carry):
        step, _, _, done, _, _, _ = carry
        return (step < r) & ~jnp.all(done)

    def body(carry):
        step, tokens, logprobs, done, cache, token, position = carry
        logits, cache = model.decode_step(token[:, None], position[:, None], cache,
                                          attention_mask=(~done)[:, None].astype(jnp.int32))
        new, logp = _select(logits[:, 0, :], keys, step, temperature, top_p, st)
        new = jnp.where(done, st.pad_id, new)
        logp = jnp.where(done, 0.0, logp)
        tokens = jax.lax.dynamic_update_slice(tokens, new[:, None], (0, step))
        logprobs = jax.lax.dynamic_update_slice(logprobs, logp[:, None], (0, step))
        if not st.ignore_eos:
            done = done | _is_eos(new, st.eos_ids)
        return step + 1, tokens, logprobs, done, cache, new, position + 1

    carry = (jnp.asarray(1, jnp.int32), tokens, logprobs, done, cache, token, position + 0)
    _, tokens, logprobs, _, _, _, _ = jax.lax.while_loop(cond, body, carry)
    mask = jnp.ones_like(tokens) if st.ignore_eos else response_mask(tokens, st.eos_ids)
    return tokens, logprobs, mask


_sample_core_jit = jax.jit(_sample_core, static_argnames=("graphdef", "st"))


def compiled_programs() -> int:
    """How many sampler programs are compiled so far (tests use it to assert no recompiles)."""
    return _sample_core_jit._cache_size()


# -- host side -------------------------------------------------------------------------------
def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n; beyond the largest, the next multiple of the largest."""
    for b in buckets:
        if n <= b:
            return int(b)
    top = int(buckets[-1])
    return top * math.ceil(n / top)


def _batch_shards(mesh) -> int:
    if mesh is None:
        return 1
    return int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))


def _multi_process(mesh) -> bool:
    return mesh is not None and mesh.is_multi_process


def _batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))


def _check_process_blocks(sharding: NamedSharding, rows: int) -> None:
    """Require process ``p``'s devices to hold exactly rows ``[p*rows/P, (p+1)*rows/P)``.

    Then the global rows are the processes' rows concatenated in process order (what the per-row
    keys and the data iterator's update batches assume), and each process can read its rows back
    from its own devices. A tensor axis spanning processes or a device order that interleaves
    processes breaks this (`tooln1.sharding.make_mesh` orders devices by process).
    """
    block = rows // jax.process_count()
    for device, index in sharding.devices_indices_map((rows, 1)).items():
        lo, hi, _ = index[0].indices(rows)
        p = device.process_index
        if lo < p * block or hi > (p + 1) * block:
            raise ValueError(
                f"sampling on a mesh spanning {jax.process_count()} processes needs each process's devices to "
                f"hold a contiguous, process-ordered share of the batch axes (data, fsdp); device {device.id} of "
                f"process {p} holds rows {lo}:{hi} of {rows} (mesh {dict(sharding.mesh.shape)}: keep the tensor "
                "axis within a process and order the devices by process)")


def _global_rows(local: np.ndarray, mesh) -> jax.Array:
    """The global batch-sharded array whose rows are every process's ``local`` rows in process order."""
    sharding = _batch_sharding(mesh)
    rows = local.shape[0] * jax.process_count()
    _check_process_blocks(sharding, rows)
    return jax.make_array_from_process_local_data(sharding, local, (rows, *local.shape[1:]))


def _process_rows(x) -> np.ndarray:
    """The rows of ``x`` on this process's devices, in order (replicas read once)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].indices(x.shape[0])[0]: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])


def left_pad(prompt_ids, prompt_mask, length: int, batch: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Compact each row's real tokens (mask 1) and left-pad them to ``length``; add all-pad rows up to
    ``batch`` (those get one real pad token so no attention row is empty)."""
    ids = np.asarray(prompt_ids)
    mask = np.asarray(prompt_mask).astype(bool)
    out_ids = np.full((batch, length), pad_id, np.int32)
    out_mask = np.zeros((batch, length), np.int32)
    for i in range(ids.shape[0]):
        real = ids[i][mask[i]]
        if len(real) > length:
            raise ValueError(f"prompt {i} has {len(real)} tokens, more than the padded length {length}")
        if len(real):
            out_ids[i, length - len(real):] = real
            out_mask[i, length - len(real):] = 1
    out_mask[ids.shape[0]:, -1] = 1
    return out_ids, out_mask


def padded_shape(longest: int, batch: int, shards: int, sampling: SamplingConfig) -> tuple[int, int]:
    """(padded prompt length, padded batch) the sampler compiles for: the prompt bucket of the
    longest prompt, the batch rounded up to a power of two (``batch_buckets``) and to ``shards``."""
    b_pad = 1 << (batch - 1).bit_length() if sampling.batch_buckets else batch
    return bucket_length(longest, sampling.prompt_buckets), shards * math.ceil(b_pad / shards)


def _static(sampling: SamplingConfig) -> _Static:
    return _Static(sampling.num_samples, sampling.max_new_tokens, sampling.greedy, sampling.top_k,
                   sampling.top_p < 1.0, sampling.eos_ids, sampling.pad_id, sampling.ignore_eos)


def _prepare(model, prompt_ids, prompt_mask, sampling: SamplingConfig, rng):
    """Host-side validation, bucketing and placement; returns (core args, static, ids, mask, b)."""
    ids = np.asarray(prompt_ids)
    mask = np.ones_like(ids) if prompt_mask is None else np.asarray(prompt_mask)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"prompt_ids {ids.shape} and prompt_mask {mask.shape} must both be [B, T]")
    b = ids.shape[0]
    if b == 0:
        raise ValueError("sample() needs at least one prompt")
    lengths = mask.astype(bool).sum(-1)
    if lengths.min() == 0:
        raise ValueError(f"prompt {int(np.argmin(lengths))} is empty (its mask has no 1s)")
    vocab = model.config.vocab_size
    if ids[mask.astype(bool)].max() >= vocab or ids[mask.astype(bool)].min() < 0:
        raise ValueError(f"prompt_ids has token ids outside [0, {vocab})")
    if any(not 0 <= e < vocab for e in sampling.eos_ids):
        raise ValueError(f"eos_ids {sampling.eos_ids} outside the vocabulary [0, {vocab})")
    mesh = getattr(model, "mesh", None)
    longest, b_max, shards = int(lengths.max()), b, _batch_shards(mesh)
    if _multi_process(mesh):  # one program for all processes: agree on the padded shapes
        agreed = multihost_utils.process_allgather(np.array([longest, b], np.int32)).max(0)
        longest, b_max = int(agreed[0]), int(agreed[1])
        shards = max(shards // jax.process_count(), 1)  # batch shards per process
    p, b_pad = padded_shape(longest, b_max, shards, sampling)
    ids_np, mask_np = left_pad(ids, mask, p, b_pad, sampling.pad_id)

    if isinstance(rng, (int, np.integer)):
        rng = jax.random.key(int(rng))
    st = _static(sampling)
    graphdef, state = nnx.split(model)
    if _multi_process(mesh):
        ids_dev, mask_dev = _global_rows(ids_np, mesh), _global_rows(mask_np, mesh)
    elif mesh is not None:
        batch_sharding = _batch_sharding(mesh)
        ids_dev = jax.device_put(ids_np, batch_sharding)
        mask_dev = jax.device_put(mask_np, batch_sharding)
    else:
        ids_dev, mask_dev = jnp.asarray(ids_np), jnp.asarray(mask_np)
    temperature = jnp.asarray(sampling.temperature if not sampling.greedy else 1.0, jnp.float32)
    args = (graphdef, state, ids_dev, mask_dev, rng, temperature, jnp.asarray(sampling.top_p, jnp.float32))
    return args, st, ids_np, mask_np, b


def precompile(model, prompt_ids, prompt_mask, sampling: SamplingConfig) -> float:
    """Compile (without running) the program `sample` will use for inputs of this shape; returns the
    seconds spent. With JAX's persistent compilation cache enabled the next `sample` call loads it."""
    import time

    args, st, _, _, _ = _prepare(model, prompt_ids, prompt_mask, sampling, 0)
    t0 = time.perf_counter()
    _sample_core_jit.lower(*args, st=st).compile()
    return time.perf_counter() - t0


def lower(model, sampling: SamplingConfig, batch_size: int, prompt_len: int) -> jax.stages.Lowered:
    """Lower (without running) the program `sample` runs for ``batch_size`` prompts of up to
    ``prompt_len`` tokens; ``model`` may be abstract (``ShapeDtypeStruct`` params with shardings,
    e.g. on a target's compile-only devices). For ``tooln1-fit``."""
    mesh = getattr(model, "mesh", None)
    p, b_pad = padded_shape(prompt_len, batch_size, _batch_shards(mesh), sampling)
    sharding = None if mesh is None else _batch_sharding(mesh)
    ids = jax.ShapeDtypeStruct((b_pad, p), jnp.int32, sharding=sharding)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    graphdef, state = nnx.split(model)
    return _sample_core_jit.lower(graphdef, state, ids, ids, jax.eval_shape(jax.random.key, 0), scalar, scalar,
                                  st=_static(sampling))


def sample(model, prompt_ids, prompt_mask, sampling: SamplingConfig, rng) -> SampleOutput:
    """Sample ``sampling.num_samples`` responses for each prompt (see the module docstring).

    ``prompt_ids``/``prompt_mask`` are ``[B, T]`` (numpy or jax; any padding side: real tokens are
    those with mask 1). ``rng`` is a ``jax.random`` key or an int seed.

    On a mesh spanning several processes, every process calls this with its own ``[B_p, T_p]``
    prompts (``B_p`` and ``T_p`` may differ between processes; each needs at least one prompt) and
    the same ``rng``; the result holds the global arrays, padding rows included, and
    ``.local()`` gives this process's rows.
    """
    args, st, ids_np, mask_np, b = _prepare(model, prompt_ids, prompt_mask, sampling, rng)
    tokens, logprobs, resp_mask = _sample_core_jit(*args, st=st)
    g = sampling.num_samples
    prompt_ids_rep = np.repeat(ids_np, g, axis=0)
    prompt_mask_rep = np.repeat(mask_np, g, axis=0)
    mesh = getattr(model, "mesh", None)
    if _multi_process(mesh):  # a global array cannot drop other processes' padding rows: local() does
        sharding = _batch_sharding(mesh)
        tokens, logprobs, resp_mask = (jax.device_put(x, sharding) for x in (tokens, logprobs, resp_mask))
        return SampleOutput(tokens, logprobs, resp_mask, _global_rows(prompt_ids_rep, mesh),
                            _global_rows(prompt_mask_rep, mesh), num_local=b * g)
    if ids_np.shape[0] != b:
        keep = b * g
        tokens, logprobs, resp_mask = tokens[:keep], logprobs[:keep], resp_mask[:keep]
        prompt_ids_rep, prompt_mask_rep = prompt_ids_rep[:keep], prompt_mask_rep[:keep]
    return SampleOutput(tokens, logprobs, resp_mask, jnp.asarray(prompt_ids_rep), jnp.asarray(prompt_mask_rep),
                        num_local=b * g)


# -- text in, text out -------------------------------------------------------------------------
def eos_ids_for(model, tokenizer) -> tuple[int, ...]:
    """EOS ids: the checkpoint's generation_config.json when the model came from one, else the
    tokenizer's eos plus Qwen's ``<|im_end|>`` / ``<|endoftext|>`` when it has them."""
    ids: list[int] = []
    src = getattr(model, "source_dir", None)
    if src and os.path.exists(os.path.join(src, "generation_config.json")):
        with open(os.path.join(src, "generation_config.json"), encoding="utf-8") as f:
            eos = json.load(f).get("eos_token_id")
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        ids += [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
    return tuple(dict.fromkeys(int(i) for i in ids))


def generate(model, tokenizer, prompts: Sequence[str], n: int = 1, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             eos_ids: Sequence[int] | None = None, batch_size: int | None = None,
             skip_special_tokens: bool = False) -> list[list[str]]:
    """Sample ``n`` completions for each already-templated prompt; returns ``[len(prompts)][n]`` strings.

    Responses are cut after the first EOS and decoded with special tokens kept (the EOS itself is
    dropped), as the reward expects. ``batch_size`` prompts go through the sampler at a time
    (default: all at once). On a mesh spanning several processes each process gets the completions of
    the prompts it passed.
    """
    if isinstance(prompts, str):
        raise TypeError("generate() takes a list of prompt strings, not a single string")
    prompts = list(prompts)
    if not prompts:
        return []
    eos = tuple(eos_ids) if eos_ids is not None else eos_ids_for(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    cfg = SamplingConfig(num_samples=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         top_k=top_k, eos_ids=eos, pad_id=pad)
    key = jax.random.key(seed)
    out: list[list[str]] = []
    step = batch_size or len(prompts)
    for start in range(0, len(prompts), step):
        chunk = prompts[start:start + step]
        enc = [tokenizer.encode(p, add_special_tokens=False) for p in chunk]
        width = max(len(e) for e in enc)
        ids = np.full((len(enc), width), pad, np.int32)
        mask = np.zeros((len(enc), width), np.int32)
        for i, e in enumerate(enc):
            ids[i, width - len(e):] = e
            mask[i, width - len(e):] = 1
        res = sample(model, ids, mask, cfg, jax.random.fold_in(key, start)).local()
        toks, m = res.tokens, res.mask
        eos_set = set(eos)
        for i in range(len(chunk)):
            group = []
            for j in range(n):
                row = toks[i * n + j][m[i * n + j].astype(bool)].tolist()
                if row and row[-1] in eos_set:
                    row = row[:-1]
                group.append(tokenizer.decode(row, skip_special_tokens=skip_special_tokens))
            out.append(group)
    return out


__all__ = ["SamplingConfig", "SampleOutput", "sample", "generate", "response_mask", "response_mask_np", "bucket_length",
           "eos_ids_for", "compiled_programs", "precompile", "lower", "padded_shape", "DEFAULT_PROMPT_BUCKETS"]
