"""Group sampling: G samples per prompt from the rollout engine (`tooln1.rollout.engine`), as arrays.

GRPO's rollouts, validation and `generate` come from here (DESIGN §3, §8). For ``B`` prompts and
``G = num_samples``:

1. The prompts' real tokens (mask 1, any padding side) go to the engine, which prefills each prompt
   once into KV pages its G samples share and decodes them with continuous batching (fixed slots, a
   finished sample hands its slot to the next one). Row ``b*G + g`` of the output is sample ``g`` of
   prompt ``b``; ``prompt_ids`` is the prompt left-padded to a bucketed length ``P``
   (``prompt_buckets``), which also fixes the engine's page-table width (fewer compiled shapes).
2. Sampling: ``temperature == 0`` is greedy (argmax); otherwise logits/T, then top-k (``top_k > 0``),
   then top-p (``top_p < 1``, on the renormalised top-k distribution; the HF order), then a categorical
   draw with key ``fold_in(fold_in(fold_in(seed_key, b), g), step)``: a sample depends on the seed,
   its prompt index and its sample index only, not on the batch, the slots or the schedule.
3. ``logprobs`` are ``log_softmax(logits / T)`` of the sampled token over the *unfiltered* vocabulary
   (``T = 0``: ``log_softmax(logits)``), as the trainer recomputes them (DESIGN §8). ``mask`` is 1 up to
   and including the first EOS, 0 after; tokens after EOS are ``pad_id`` with log-prob 0.

On a mesh (``model.mesh``) the engine decodes from a tensor-parallel copy of the weights, and each
batch shard (data x fsdp) decodes its own slots from its own KV pages (`tooln1.rollout.engine`).

Multi-host: when the mesh spans several processes, each process passes only *its* prompts (as the
data iterator hands them out) and every process must call `sample` together. The prompts are
gathered so that every process runs the same engine schedule over the global list (process ``p``'s
prompt ``i`` has global index ``i`` plus the prompt counts of processes ``< p``), so a seed gives the
same samples as one process holding all prompts. The outputs are global arrays whose per-process
blocks are padded to the largest process's batch; `SampleOutput.local` returns this process's rows
as numpy.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from tooln1.data.tokens import bucket_length, decode_responses, left_pad
from tooln1.rollout.engine import Completion, Engine, EngineConfig
from tooln1.rollout.programs import run_prefill, run_round
from tooln1.sharding import BATCH_AXES

DEFAULT_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """What to sample. Hashable; only the fields marked *static* change the compiled program."""

    num_samples: int = 1  # G, samples per prompt
    max_new_tokens: int = 64  # R, response length (static through the page-table width)
    temperature: float = 1.0  # 0 = greedy (greedy vs not is static; the value is traced)
    top_p: float = 1.0  # nucleus; 1 = off (on/off static, value traced)
    top_k: int = 0  # 0 = off (static)
    eos_ids: tuple[int, ...] = ()  # any of these ends a response (static)
    pad_id: int = 0  # written after EOS
    ignore_eos: bool = False  # decode exactly max_new_tokens (benchmarks; static)
    prompt_buckets: tuple[int, ...] = DEFAULT_PROMPT_BUCKETS  # allowed padded prompt lengths (static)
    engine: EngineConfig = EngineConfig()  # slots, pages, chunk sizes (static)

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
    # [B*G, R] int32, 1 for the tokens the policy sampled, where a multi-turn trajectory also holds tokens
    # its environment inserted (`tooln1.rollout.multi_turn`); None: every token under ``mask`` was sampled
    sampled: Any = None

    @property
    def lengths(self) -> jax.Array:
        return self.mask.sum(-1)

    def local(self) -> SampleOutput:
        """This process's rows as numpy, in the order of the prompts it passed, padding rows dropped.

        Single-process the arrays already hold just the caller's rows, so this is ``np.asarray`` of
        each; on a mesh spanning several processes the global arrays cannot be read whole.
        """
        arrays = (self.tokens, self.logprobs, self.mask, self.prompt_ids, self.prompt_mask)
        sampled = None if self.sampled is None else _process_rows(self.sampled)[:self.num_local]
        return SampleOutput(*(_process_rows(x)[:self.num_local] for x in arrays), num_local=self.num_local,
                            sampled=sampled)


def response_mask_np(tokens, eos_ids: Sequence[int]) -> np.ndarray:
    """1 up to and including the first EOS of each row, 0 after (all 1 when there is none)."""
    tokens = np.asarray(tokens)
    hit = np.isin(tokens, np.asarray(list(eos_ids), dtype=tokens.dtype)).astype(np.int32)
    return ((np.cumsum(hit, axis=-1) - hit) == 0).astype(np.int32)


def compiled_programs() -> int:
    """How many engine programs are compiled so far (tests use it to assert no recompiles)."""
    return run_round._cache_size() + run_prefill._cache_size()


# -- host side -------------------------------------------------------------------------------
def _multi_process(mesh) -> bool:
    return mesh is not None and mesh.is_multi_process


def _batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


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


def _real_prompts(model, prompt_ids, prompt_mask, sampling: SamplingConfig) -> list[np.ndarray]:
    """Validate the inputs; each prompt's real tokens (mask 1)."""
    ids = np.asarray(prompt_ids)
    mask = np.ones_like(ids) if prompt_mask is None else np.asarray(prompt_mask)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"prompt_ids {ids.shape} and prompt_mask {mask.shape} must both be [B, T]")
    if ids.shape[0] == 0:
        raise ValueError("sample() needs at least one prompt")
    mask = mask.astype(bool)
    lengths = mask.sum(-1)
    if lengths.min() == 0:
        raise ValueError(f"prompt {int(np.argmin(lengths))} is empty (its mask has no 1s)")
    vocab = model.config.vocab_size
    if ids[mask].max() >= vocab or ids[mask].min() < 0:
        raise ValueError(f"prompt_ids has token ids outside [0, {vocab})")
    if any(not 0 <= e < vocab for e in sampling.eos_ids):
        raise ValueError(f"eos_ids {sampling.eos_ids} outside the vocabulary [0, {vocab})")
    return [ids[i][mask[i]].astype(np.int32) for i in range(ids.shape[0])]


def _all_processes(prompts: list[np.ndarray], mesh) -> tuple[list[np.ndarray], int, int]:
    """(every process's prompts in process order, this process's first global index, largest count)."""
    if not _multi_process(mesh):
        return prompts, 0, len(prompts)
    counts = multihost_utils.process_allgather(np.array([len(prompts), max(map(len, prompts))], np.int32))
    b_max, width = int(counts[:, 0].max()), int(counts[:, 1].max())
    local = np.zeros((b_max, width + 1), np.int32)  # length, then the tokens
    for i, p in enumerate(prompts):
        local[i, 0], local[i, 1:1 + len(p)] = len(p), p
    every = multihost_utils.process_allgather(local)
    merged = [row[1:1 + row[0]] for proc, n in zip(every, counts[:, 0]) for row in proc[:n]]
    return merged, int(counts[:jax.process_index(), 0].sum()), b_max


def _key(rng):
    return jax.random.key(int(rng)) if isinstance(rng, (int, np.integer)) else rng


def precompile(model, prompt_ids, prompt_mask, sampling: SamplingConfig) -> float:
    """Compile (without running) the engine programs `sample` will use for these prompts (the prefill
    and the widest round); returns the
    seconds spent. With JAX's persistent compilation cache enabled the next `sample` call loads it."""
    import time

    prompts, _, _ = _all_processes(_real_prompts(model, prompt_ids, prompt_mask, sampling), model.mesh)
    engine = Engine(model, sampling.engine)
    longest = bucket_length(max(map(len, prompts)), sampling.prompt_buckets)
    t0 = time.perf_counter()
    for program in ("prefill", "round"):
        engine.lower(sampling, len(prompts) * sampling.num_samples, longest, _key(0), program=program).compile()
    return time.perf_counter() - t0


def lower(model, sampling: SamplingConfig, batch_size: int, prompt_len: int,
          program: str = "round") -> jax.stages.Lowered:
    """Lower (without running) the engine program `sample` runs for ``batch_size`` prompts of up to
    ``prompt_len`` tokens: the decode ``"round"`` or the ``"prefill"`` of a chunk. ``model`` may be
    abstract (``nnx.eval_shape``, compile-only devices). Its shapes, and so its memory, do not depend
    on ``batch_size`` beyond the slot count. For ``tooln1-fit``."""
    longest = bucket_length(prompt_len, sampling.prompt_buckets)
    return Engine(model, sampling.engine).lower(sampling, batch_size * sampling.num_samples, longest, program=program)


def sample(model, prompt_ids, prompt_mask, sampling: SamplingConfig, rng, engine: Engine | None = None) -> SampleOutput:
    """Sample ``sampling.num_samples`` responses for each prompt (see the module docstring).

    ``prompt_ids``/``prompt_mask`` are ``[B, T]`` (numpy or jax; any padding side: real tokens are
    those with mask 1). ``rng`` is a ``jax.random`` key or an int seed. ``engine`` reuses an
    `Engine` (and its inference weights, see `Engine.refresh`); by default one is made from ``model``.

    On a mesh spanning several processes, every process calls this with its own ``[B_p, T_p]``
    prompts (``B_p`` and ``T_p`` may differ between processes; each needs at least one prompt) and
    the same ``rng``; the result holds the global arrays, padding rows included, and
    ``.local()`` gives this process's rows.
    """
    return sample_groups(model, prompt_ids, prompt_mask, sampling, rng, engine)[0]


def sample_groups(model, prompt_ids, prompt_mask, sampling: SamplingConfig, rng, engine: Engine | None = None,
                  on_group: Callable[[int, list[Completion]], Any] | None = None) -> tuple[SampleOutput, list[Any]]:
    """`sample`, plus ``on_group(b, completions)`` for each of this process's prompts ``b``, run on the
    engine's worker thread as soon as the prompt's G samples are done; returns its results in prompt order."""
    mine = _real_prompts(model, prompt_ids, prompt_mask, sampling)
    mesh = getattr(model, "mesh", None)
    prompts, first, b_max = _all_processes(mine, mesh)
    p = bucket_length(max(map(len, prompts)), sampling.prompt_buckets)
    engine = engine or Engine(model, sampling.engine)
    own = range(first, first + len(mine))
    hook = None if on_group is None else (lambda i, group: on_group(i - first, group) if i in own else None)
    results, scored = engine.generate(prompts, sampling, _key(rng), max_prompt_len=p, on_group=hook)
    g, r = sampling.num_samples, sampling.max_new_tokens
    rows = b_max * g if _multi_process(mesh) else len(mine) * g
    tokens = np.full((rows, r), sampling.pad_id, np.int32)
    logprobs = np.zeros((rows, r), np.float32)
    for i in range(len(mine)):
        for j, done in enumerate(results[first + i]):
            tokens[i * g + j, :len(done.tokens)] = done.tokens
            logprobs[i * g + j, :len(done.tokens)] = done.logprobs
    mask = np.ones_like(tokens) if sampling.ignore_eos else response_mask_np(tokens, sampling.eos_ids)
    mask[len(mine) * g:] = 0
    ids, pmask = left_pad([q for q in mine for _ in range(g)], p, sampling.pad_id, rows)
    arrays = (tokens, logprobs, mask, ids, pmask)
    if _multi_process(mesh):  # a global array cannot drop other processes' padding rows: local() does
        out = SampleOutput(*(_global_rows(x, mesh) for x in arrays), num_local=len(mine) * g)
    else:
        out = SampleOutput(*map(jnp.asarray, arrays), num_local=len(mine) * g)
    return out, scored[first:first + len(mine)]


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
        ids, mask = left_pad(enc, max(map(len, enc)), pad)
        res = sample(model, ids, mask, cfg, jax.random.fold_in(key, start)).local()
        texts = decode_responses(tokenizer, res.tokens, res.mask, eos, skip_special_tokens)
        out += [texts[i * n:(i + 1) * n] for i in range(len(chunk))]
    return out


__all__ = ["SamplingConfig", "SampleOutput", "sample", "sample_groups", "generate", "response_mask_np",
           "bucket_length", "eos_ids_for", "compiled_programs", "precompile", "lower", "DEFAULT_PROMPT_BUCKETS"]
