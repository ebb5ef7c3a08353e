"""The training loop and ``tooln1-train``: optional SFT warm-up, then GRPO, then HF export.

    tooln1-train --config configs/quickstart.py
    tooln1-train --config configs/paper.py:model=qwen2.5-7b,mesh=gpu8,recipe=rl --config.grpo.batch_size=512

One GRPO step (DESIGN §8): next global batch of prompts from the deterministic iterator (this
process's share) → render + tokenize (left pad) → ``sample`` G responses per prompt → decode on the
host with special tokens kept → ``score_batch`` → ``compute_advantages`` → old log-probs recomputed
with the current params → reference log-probs from the frozen initial params → ``Updater.step``
(``num_mini_batches`` optimizer steps). Periodic validation is the greedy mean binary reward on a
held-out split. Checkpoints (orbax: params, optimizer state, step, data position, RNG) are written
every ``checkpoint.every`` steps and at the end of each phase; a restarted run resumes from the
latest one automatically. At the end the policy is exported as an HF checkpoint.

The SFT phase (Table 3 recipes, warm-starts) trains masked next-token CE on the assistant reply
``<think>…</think><tool_call>[…]</tool_call><|im_end|>`` (``sft.target="reason"``) or
``<tool_call>[…]</tool_call><|im_end|>`` (``"no_reason"``) with the same :class:`Updater`.
Config keys: docs/training.md.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("tooln1.train")


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


# =============================================================================================
# configuration checks (before anything is compiled)


def _split_specs(sources: str) -> list[str]:
    return [s.strip() for s in (sources or "").split(",") if s.strip()]


def _parse_ratios(text: str) -> dict[str, float]:
    out = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"config.data.mix_ratios: {part!r} is not name=float (e.g. 'xlam=1.0,toolace=2.0')")
    return out


def _looks_like_hub_id(location: str) -> bool:
    parts = location.split("/")
    return (len(parts) == 2 and all(parts) and not location.startswith((".", "~"))
            and not os.path.splitext(location)[1])


SYNTHETIC_KINDS = ("synthetic", "synthetic-simple", "synthetic-tiny")


def _source_kind(spec: str) -> str:
    """The mixing kind of a spec: every synthetic variant counts as ``synthetic``."""
    kind = spec.partition(":")[0]
    return "synthetic" if kind in SYNTHETIC_KINDS else kind


def _check_spec(key: str, spec: str) -> None:
    kind, sep, location = spec.partition(":")
    if not sep or not location:
        raise ConfigError(f"config.{key}: bad data spec {spec!r}; expected KIND:LOCATION (xlam:PATH, toolace:PATH, "
                          "synthetic:N[:SEED], synthetic-simple:N[:SEED], synthetic-tiny:N[:SEED], prepared:PATH)")
    if kind in SYNTHETIC_KINDS:
        n, _, seed = location.partition(":")
        if not n.isdigit() or (seed and not seed.isdigit()):
            raise ConfigError(f"config.{key}: bad synthetic spec {spec!r}; expected {kind}:N[:SEED]")
        return
    if kind not in ("xlam", "toolace", "prepared"):
        raise ConfigError(f"config.{key}: unknown data source kind {kind!r} in {spec!r}; "
                          "expected xlam, toolace, synthetic, synthetic-simple, synthetic-tiny or prepared")
    if os.path.exists(location):
        return
    if kind != "prepared" and _looks_like_hub_id(location):
        return  # a hub id; `datasets` resolves it (or says it cannot, offline)
    raise ConfigError(f"config.{key}: data path {location!r} (in {spec!r}) does not exist")


def mesh_batch_shards(cfg: Any) -> int:
    """Devices the batch is split over (data × fsdp) for the configured mesh."""
    import jax

    n = len(jax.devices())
    d, f, t = int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor)
    known = math.prod(x for x in (d, f, t) if x != -1)
    sizes = [n // known if x == -1 else x for x in (d, f, t)]
    return sizes[0] * sizes[1]


def validate_config(cfg: Any, check_paths: bool = True) -> None:
    """Raise :class:`ConfigError` with one message naming every offending key."""
    import jax

    from tooln1.grpo import LOSS_AGG_MODES as AGGREGATIONS
    from tooln1.reward import KINDS

    errors: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errors.append(msg)

    sft, grpo = cfg.sft, cfg.grpo
    need(sft.enabled or grpo.enabled, "config.sft.enabled and config.grpo.enabled are both False: nothing to train")

    # -- model
    tiny = cfg.model.tiny.enabled
    if check_paths:
        if not cfg.model.path:
            need(tiny, "config.model.path is empty (set it to an HF checkpoint dir, or model.tiny.enabled=True)")
        elif not tiny or os.path.exists(cfg.model.path):
            need(os.path.isfile(os.path.join(cfg.model.path, "config.json")),
                 f"config.model.path: {cfg.model.path!r} is not an HF checkpoint directory (no config.json there)")
        if cfg.model.tokenizer:
            need(os.path.isdir(cfg.model.tokenizer), f"config.model.tokenizer: directory {cfg.model.tokenizer!r} does not exist")
    for key in ("dtype", "compute_dtype"):
        need(cfg.model[key] in ("float32", "bfloat16", "float16"),
             f"config.model.{key}={cfg.model[key]!r}: expected float32, bfloat16 or float16")
    if cfg.model.preset:
        from tooln1.models import PRESETS

        need(cfg.model.preset in PRESETS, f"config.model.preset={cfg.model.preset!r}: unknown; known: {sorted(PRESETS)}")

    # -- mesh
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    n_dev = len(jax.devices())
    procs = jax.process_count()
    shards = 1
    if sizes.count(-1) > 1 or any((s < 1 and s != -1) for s in sizes):
        errors.append(f"config.mesh: sizes data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} must be >= 1 (one may be -1)")
    else:
        known = math.prod(s for s in sizes if s != -1)
        if (-1 in sizes and n_dev % known) or (-1 not in sizes and (known > n_dev or (procs > 1 and known != n_dev))):
            errors.append(f"config.mesh: data={sizes[0]} × fsdp={sizes[1]} × tensor={sizes[2]} does not fit the "
                          f"{n_dev} available {jax.default_backend()} devices")
        else:
            shards = mesh_batch_shards(cfg)
    if cfg.mesh.num_devices:
        need(cfg.mesh.num_devices == n_dev, f"config.mesh.num_devices={cfg.mesh.num_devices} (preset "
             f"{cfg.mesh.preset!r}) but {n_dev} {jax.default_backend()} devices are available")

    # -- data
    specs = _split_specs(cfg.data.sources)
    need(bool(specs), "config.data.sources is empty")
    for s in specs:
        try:
            if check_paths:
                _check_spec("data.sources", s)
        except ConfigError as e:
            errors.append(str(e))
    if cfg.data.val_spec and check_paths:
        try:
            _check_spec("data.val_spec", cfg.data.val_spec)
        except ConfigError as e:
            errors.append(str(e))
    need(cfg.data.val_size > 0 or bool(cfg.data.val_spec), "config.data.val_size must be > 0 (or set data.val_spec)")
    try:
        ratios = _parse_ratios(cfg.data.mix_ratios)
        kinds = {_source_kind(s) for s in specs}
        unknown = sorted(set(ratios) - kinds)
        need(not unknown, f"config.data.mix_ratios names {unknown}, which are not among the sources {sorted(kinds)}")
    except ConfigError as e:
        errors.append(str(e))
    need(0.0 <= cfg.data.irrelevance <= 1.0, f"config.data.irrelevance={cfg.data.irrelevance} must be in [0, 1]")
    need(cfg.data.max_prompt_tokens >= 1, "config.data.max_prompt_tokens must be >= 1")

    # -- SFT
    if sft.enabled:
        need(sft.target in ("reason", "no_reason"), f"config.sft.target={sft.target!r}: expected 'reason' or 'no_reason'")
        need(sft.steps > 0 or sft.epochs > 0, "config.sft: set steps > 0 or epochs > 0")
        need(sft.batch_size >= 1, f"config.sft.batch_size={sft.batch_size} must be >= 1")
        micro = sft.micro_batch_size or sft.batch_size
        need(sft.batch_size % micro == 0,
             f"config.sft.batch_size={sft.batch_size} is not a multiple of config.sft.micro_batch_size={micro}")
        need(micro % shards == 0, f"config.sft: micro-batch of {micro} rows is not divisible by the mesh's "
             f"data×fsdp size {shards} (config.mesh)")
        need(sft.batch_size % procs == 0, f"config.sft.batch_size={sft.batch_size} is not divisible by the {procs} processes")
        need(sft.loss_agg in AGGREGATIONS, f"config.sft.loss_agg={sft.loss_agg!r}: expected one of {AGGREGATIONS}")
        need(sft.max_seq_len >= 2, "config.sft.max_seq_len must be >= 2")

    # -- GRPO
    if grpo.enabled:
        need(grpo.reward in KINDS, f"config.grpo.reward={grpo.reward!r}: unknown reward kind; expected one of {list(KINDS)}")
        need(grpo.group_size >= 2, f"config.grpo.group_size={grpo.group_size}: GRPO needs at least 2 samples per "
             "prompt (group-relative advantages of a group of one carry no signal)")
        need(grpo.steps > 0 or grpo.epochs > 0, "config.grpo: set steps > 0 or epochs > 0")
        need(grpo.batch_size >= 1, f"config.grpo.batch_size={grpo.batch_size} must be >= 1")
        need(grpo.temperature > 0, f"config.grpo.temperature={grpo.temperature}: GRPO needs sampling (temperature > 0)")
        need(0 < grpo.top_p <= 1, f"config.grpo.top_p={grpo.top_p} must be in (0, 1]")
        need(grpo.max_response_tokens >= 1, "config.grpo.max_response_tokens must be >= 1")
        need(grpo.loss_agg in AGGREGATIONS, f"config.grpo.loss_agg={grpo.loss_agg!r}: expected one of {AGGREGATIONS}")
        need(grpo.entropy_coef == 0, f"config.grpo.entropy_coef={grpo.entropy_coef}: only 0 is supported (the paper's value)")
        need(grpo.clip_eps >= 0 and grpo.kl_coef >= 0, "config.grpo.clip_eps and config.grpo.kl_coef must be >= 0")
        rows = grpo.batch_size * max(grpo.group_size, 1)
        m = grpo.num_mini_batches
        if m < 1 or rows % m:
            errors.append(f"config.grpo.num_mini_batches={m} does not divide the {rows} responses per step "
                          f"(config.grpo.batch_size={grpo.batch_size} × group_size={grpo.group_size})")
        else:
            mini = rows // m
            micro = grpo.micro_batch_size or mini
            if mini % micro:
                errors.append(f"config.grpo.micro_batch_size={micro} does not divide a mini-batch of {mini} rows")
            elif micro % shards:
                errors.append(f"config.grpo: a micro-batch of {micro} rows is not divisible by the mesh's data×fsdp "
                              f"size {shards} (config.grpo.batch_size / group_size / num_mini_batches / "
                              "micro_batch_size vs config.mesh)")
            lp_micro = grpo.logprob_micro_batch_size or micro
            need(rows % lp_micro == 0, f"config.grpo.logprob_micro_batch_size={lp_micro} does not divide {rows} rows")
            need(not grpo.share_prompt or (micro % grpo.group_size == 0 and lp_micro % grpo.group_size == 0),
                 f"config.grpo.share_prompt packs whole groups: micro_batch_size={micro} and logprob_micro_batch_size="
                 f"{lp_micro} must be multiples of group_size={grpo.group_size}")
        need(grpo.batch_size % procs == 0, f"config.grpo.batch_size={grpo.batch_size} is not divisible by the {procs} processes")

    need(cfg.eval.batch_size >= 1 and cfg.eval.max_new_tokens >= 1, "config.eval.batch_size and max_new_tokens must be >= 1")
    need(cfg.grpo.prompt_bucket >= 0, f"config.grpo.prompt_bucket={cfg.grpo.prompt_bucket} must be >= 0")
    need(cfg.checkpoint.keep >= 1, f"config.checkpoint.keep={cfg.checkpoint.keep} must be >= 1")
    need(cfg.checkpoint.every >= 0, "config.checkpoint.every must be >= 0 (0 = only at phase ends)")
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


# =============================================================================================
# data


def load_data(cfg: Any, tokenizer: Any, say=print) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Training and validation records: sources → mix → irrelevance → length filter → split."""
    from tooln1.data import add_irrelevance, filter_by_prompt_length, load_records_with_stats, mix, train_val_split

    by_kind: dict[str, list[dict]] = {}
    stats: dict[str, Any] = {}
    for spec in _split_specs(cfg.data.sources):
        records, st = load_records_with_stats(spec)
        kind = _source_kind(spec)
        by_kind.setdefault(kind, []).extend(records)
        stats[spec] = {"kept": st.kept, "dropped": dict(st.dropped)}
    ratios = _parse_ratios(cfg.data.mix_ratios)
    records = mix(by_kind, ratios, seed=cfg.data.seed) if (len(by_kind) > 1 or ratios) else by_kind[next(iter(by_kind))]
    if cfg.data.irrelevance > 0:
        records = add_irrelevance(records, cfg.data.irrelevance, seed=cfg.data.seed)
    records, counts = filter_by_prompt_length(records, tokenizer, cfg.data.max_prompt_tokens)
    stats["length_filter"] = counts
    if cfg.data.val_spec:
        val, _ = load_records_with_stats(cfg.data.val_spec)
        val, _ = filter_by_prompt_length(val, tokenizer, cfg.data.max_prompt_tokens)
        if cfg.data.val_size:
            val = val[: cfg.data.val_size]
        train = records
    else:
        if cfg.data.val_size >= len(records):
            raise ConfigError(f"config.data.val_size={cfg.data.val_size} leaves no training data "
                              f"({len(records)} records after filtering)")
        train, val = train_val_split(records, val_size=cfg.data.val_size, seed=cfg.data.seed)
    stats.update(train=len(train), val=len(val))
    say(f"data: {len(train)} training / {len(val)} validation records "
        f"({counts['prompt_too_long']} dropped for prompts over {cfg.data.max_prompt_tokens} tokens)")
    return train, val, stats


def sft_response(record: dict, target: str, think_text: str, eos: str = "<|im_end|>") -> str:
    """The SFT target reply in the paper's format."""
    calls = json.dumps(record["answer"], ensure_ascii=False)
    body = f"<tool_call>{calls}</tool_call>{eos}"
    if target == "no_reason":
        return body
    think = record.get("reasoning")
    if not think:
        names = ", ".join(c["name"] for c in record["answer"]) or "no function"
        think = think_text.format(names=names)
    return f"<think>{think}</think>{body}"


def tokenize_prompts(records: Sequence[dict], tokenizer: Any) -> list[list[int]]:
    from tooln1.data import render_prompt

    texts = [render_prompt(r, tokenizer) for r in records]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def left_pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than {length}")
        if len(s):
            ids[i, length - len(s):] = s
            mask[i, length - len(s):] = 1
    return ids, mask


def _bucket(n: int, lo: int = 16) -> int:
    b = lo
    while b < n:
        b *= 2
    return b


# =============================================================================================
# the trainer


@dataclasses.dataclass
class PhaseResult:
    steps: int = 0
    seconds: float = 0.0
    val_before: float | None = None
    val_after: float | None = None


class Trainer:
    """Builds everything from a config; :meth:`run` trains and returns a summary dict."""

    def __init__(self, cfg: Any):
        import jax

        self.cfg = cfg
        self.workdir = os.path.abspath(cfg.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.t_start = time.perf_counter()
        validate_config(cfg)
        from tooln1.metrics import MetricsWriter

        if cfg.compile_cache_dir:
            import jax

            jax.config.update("jax_compilation_cache_dir", os.path.abspath(cfg.compile_cache_dir))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        self.writer = MetricsWriter(self.workdir, tensorboard=cfg.log.tensorboard)
        self.process_index = jax.process_index()
        self.loop_steps = 0  # steps run by this process (debug.kill_after_steps)

    # -- small helpers ----------------------------------------------------------------------
    def say(self, msg: str) -> None:
        if self.process_index == 0:
            print(f"[tooln1-train] {msg}", flush=True)
        log.info(msg)

    def _killed(self) -> bool:
        k = self.cfg.debug.kill_after_steps if "debug" in self.cfg else 0
        return bool(k) and self.loop_steps >= k

    def _log_ids(self, phase: str, step: int, ids: Sequence[str]) -> None:
        if self.cfg.log.data_ids and self.process_index == 0:
            with open(os.path.join(self.workdir, "data_ids.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"phase": phase, "step": step, "ids": list(ids)}) + "\n")

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        import jax

        import tooln1
        from tooln1.sampling import eos_ids_for
        from tooln1.sharding import make_mesh

        cfg = self.cfg
        path = cfg.model.path
        if cfg.model.tiny.enabled and (not path or not os.path.isfile(os.path.join(path, "config.json"))):
            from tooln1.testing import make_random_checkpoint

            path = path or os.path.join(self.workdir, "tiny_model")
            if not os.path.isfile(os.path.join(path, "config.json")):
                t = cfg.model.tiny
                if self.process_index == 0:
                    make_random_checkpoint(path, layers=t.layers, hidden=t.hidden, heads=t.heads, kv_heads=t.kv_heads,
                                           intermediate=t.intermediate, seed=t.seed)
                if jax.process_count() > 1:  # the others load it next: wait until process 0 has written it
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices("tooln1 tiny checkpoint written")
                self.say(f"made a tiny random checkpoint in {path}")
        self.model_path = path
        shape = {"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor}
        devices = jax.devices()
        if -1 not in shape.values() and math.prod(shape.values()) < len(devices):
            devices = devices[: math.prod(shape.values())]  # a smaller mesh on the first devices
        self.mesh = make_mesh(shape, devices=devices)
        self.model = tooln1.load_model(path, dtype=cfg.model.dtype, mesh=self.mesh,
                                       compute_dtype=cfg.model.compute_dtype, remat=cfg.model.remat)
        if cfg.model.preset:
            self._check_preset(cfg.model.preset)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or path)
        self.eos_ids = eos_ids_for(self.model, self.tokenizer)
        if not self.eos_ids:
            raise ConfigError(f"config.model.path={path!r}: no EOS token id in generation_config.json or the tokenizer")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.eos_text = self.tokenizer.convert_ids_to_tokens(self.eos_ids[0])
        self.train_records, self.val_records, self.data_stats = load_data(cfg, self.tokenizer, self.say)
        self.base_key = jax.random.key(cfg.seed)
        from tooln1.models import count_params

        self.say(f"model {path}: {count_params(self.model.config) / 1e6:.2f}M params, mesh {dict(self.mesh.shape)} "
                 f"on {len(jax.devices())} {jax.default_backend()} device(s); workdir {self.workdir}")

    def _check_preset(self, name: str) -> None:
        from tooln1.models import PRESETS

        want, got = PRESETS[name], self.model.config
        fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
        diff = {f: (getattr(got, f), getattr(want, f)) for f in fields if getattr(got, f) != getattr(want, f)}
        if diff:
            self.say(f"warning: checkpoint {self.model_path} differs from preset {name!r}: "
                     + ", ".join(f"{k}={a} (preset {b})" for k, (a, b) in diff.items()))

    def _prompt_buckets(self) -> dict[str, Any]:
        """Padded prompt lengths: multiples of ``grpo.prompt_bucket`` (fewer compiled shapes), or the
        sampler's default powers of two when it is 0."""
        b = self.cfg.grpo.prompt_bucket
        if not b:
            return {}
        top = -(-self.cfg.data.max_prompt_tokens // b) * b
        return {"prompt_buckets": tuple(range(b, top + 1, b))}

    # -- validation -------------------------------------------------------------------------
    def validate(self, model: Any, step: int, tag: str) -> float:
        """Greedy mean binary reward on the validation records (and diagnostics), logged under val/.

        Each process samples and scores a contiguous share of the records, padded with copies of the
        first record so that all processes make the same sampler calls; the means are over every
        process's real records."""
        import jax
        from jax.experimental import multihost_utils

        from tooln1.reward import score_batch
        from tooln1.sampling import SamplingConfig, sample

        cfg = self.cfg
        t0 = time.perf_counter()
        sampling = SamplingConfig(num_samples=1, max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0,
                                  eos_ids=self.eos_ids, pad_id=self.pad_id, **self._prompt_buckets())
        responses: list[str] = []
        share = -(-len(self.val_records) // jax.process_count())
        recs = self.val_records[self.process_index * share:(self.process_index + 1) * share]
        real = np.arange(share) < len(recs)
        recs = recs + [self.val_records[0]] * (share - len(recs))
        bs = cfg.eval.batch_size
        for start in range(0, len(recs), bs):
            chunk = recs[start:start + bs]
            toks = tokenize_prompts(chunk, self.tokenizer)
            ids, mask = left_pad(toks, max(len(t) for t in toks), self.pad_id)
            out = sample(model, ids, mask, sampling, jax_key(0)).local()
            responses += self.decode(out.tokens, out.mask)
        answers = [r["answer"] for r in recs]
        rewards, diag = score_batch(responses, answers, "binary")
        sums = np.array([real.sum(), rewards[real].sum(), *(v[real].sum() for v in diag.values())], np.float32)
        if jax.process_count() > 1:
            sums = multihost_utils.process_allgather(sums).sum(0)
        acc = float(sums[1] / sums[0])
        scalars = {f"val/{k}": float(v / sums[0]) for k, v in zip(diag, sums[2:])}
        scalars["val/accuracy"] = acc
        scalars["val/seconds"] = time.perf_counter() - t0
        self.writer.write(step, scalars, phase=tag)
        if responses:
            self.writer.text("val/example", responses[0], step)
        self.say(f"validation ({tag}, step {step}): greedy mean binary reward {acc:.3f} on {len(self.val_records)} "
                 f"prompts (format {scalars['val/format_ok']:.2f}, json {scalars['val/json_ok']:.2f}, "
                 f"names {scalars['val/names_match']:.2f})")
        return acc

    def decode(self, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
        """Responses as text with special tokens kept (the trailing EOS dropped, as `generate` does)."""
        eos = set(self.eos_ids)
        rows = []
        for t, m in zip(tokens, mask):
            row = t[m.astype(bool)].tolist()
            if row and row[-1] in eos:
                row = row[:-1]
            rows.append(row)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=False)

    # -- checkpoint helpers -----------------------------------------------------------------
    def _checkpointer(self, phase: str):
        from tooln1.checkpointing import Checkpointer

        c = self.cfg.checkpoint
        return Checkpointer(os.path.join(self.workdir, "checkpoints", phase), keep=c.keep, async_save=c.async_save)

    def _meta(self, phase: str, step: int, iterator: Any, done: bool, **extra: Any) -> dict[str, Any]:
        from tooln1.checkpointing import rng_to_json

        return {"phase": phase, "step": step, "data": iterator.get_state(), "rng": rng_to_json(self.base_key),
                "done": done, **extra}

    # -- SFT --------------------------------------------------------------------------------
    def _sft_examples(self, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.cfg.sft
        prompts = tokenize_prompts(records, self.tokenizer)
        replies = [sft_response(r, cfg.target, cfg.think_text, self.eos_text) for r in records]
        targets = self.tokenizer(replies, add_special_tokens=False)["input_ids"]
        seqs, masks = [], []
        for p, t in zip(prompts, targets):
            s = (p + t)[-cfg.max_seq_len:]
            lm = ([0] * len(p) + [1] * len(t))[-cfg.max_seq_len:]
            seqs.append(s)
            masks.append(lm)
        ids, attn = left_pad(seqs, cfg.max_seq_len, self.pad_id)
        loss_mask = np.zeros_like(ids)
        for i, lm in enumerate(masks):
            loss_mask[i, cfg.max_seq_len - len(lm):] = lm
        return ids, attn, loss_mask

    def run_sft(self, model: Any) -> tuple[Any, PhaseResult]:
        import jax

        from tooln1.data.iterator import BatchIterator, global_array
        from tooln1.metrics import Progress, peak_flops, sft_flops
        from tooln1.sft import SFTLoss
        from tooln1.update import OptimizerConfig, Updater

        cfg = self.cfg.sft
        res = PhaseResult()
        # Drop examples whose prompt alone does not leave room for the reply.
        iterator = BatchIterator(len(self.train_records), cfg.batch_size, seed=self.cfg.data.seed + 1)
        total = cfg.steps or cfg.epochs * iterator.steps_per_epoch
        updater = Updater(model, SFTLoss(loss_agg=cfg.loss_agg), OptimizerConfig.from_mapping(cfg.optimizer),
                          num_mini_batches=1, micro_batch_size=cfg.micro_batch_size or None)
        state = updater.init(model)
        ckpt = self._checkpointer("sft")
        step = 0
        restored = ckpt.restore(state) if self.cfg.checkpoint.resume else None
        if restored is not None:
            state, meta = restored
            step = int(meta["step"])
            iterator.set_state(meta["data"])
            self.say(f"SFT: resumed from {ckpt.directory} step {step}")
        if step >= total:
            ckpt.close()
            return updater.model(state), res
        self.say(f"SFT: {total} steps of {cfg.batch_size} examples ({cfg.target} target), "
                 f"lr {cfg.optimizer.learning_rate}, loss aggregation {cfg.loss_agg}")
        peak = peak_flops(self.cfg.log.peak_tflops)
        bar = Progress(total, step, "sft", self.cfg.log.progress)
        t_phase = time.perf_counter()
        while step < total:
            t0 = time.perf_counter()
            idx = iterator.next()
            recs = [self.train_records[i] for i in idx]
            self._log_ids("sft", step + 1, [r["id"] for r in recs])
            ids, attn, lmask = self._sft_examples(recs)
            batch = {"input_ids": global_array(ids, self.mesh), "attention_mask": global_array(attn, self.mesh),
                     "loss_mask": global_array(lmask, self.mesh)}
            state, metrics = updater.step(state, batch)
            metrics = jax.device_get(metrics)
            step += 1
            self.loop_steps += 1
            dt = time.perf_counter() - t0
            if metrics["skipped"] > 0:
                self.say(f"SFT step {step}: non-finite loss or gradient (loss={float(metrics['loss'])}); "
                         "update skipped")
            scalars = {"sft/loss": metrics["loss"], "sft/nll": metrics["nll"], "sft/grad_norm": metrics["grad_norm"],
                       "sft/learning_rate": metrics.get("learning_rate", np.nan), "sft/skipped": metrics["skipped"],
                       "sft/tokens_per_s": float(attn.sum()) * iterator.process_count / dt,
                       "sft/step_seconds": dt,
                       "sft/mfu": sft_flops(model.config, ids.shape[0] * iterator.process_count, ids.shape[1]) / dt / peak}
            if step % self.cfg.log.every == 0 or step == total:
                self.writer.write(step, scalars, phase="sft", loss_agg=cfg.loss_agg)
            bar.update({"loss": float(metrics["loss"]), "tok/s": scalars["sft/tokens_per_s"]})
            every = self.cfg.checkpoint.every
            if step == total or (every and step % every == 0):
                ckpt.save(step, state, self._meta("sft", step, iterator, step == total, loss_agg=cfg.loss_agg))
            if self._killed():
                break
        bar.close()
        ckpt.close()
        res.steps, res.seconds = step, time.perf_counter() - t_phase
        return updater.model(state), res

    def _post_sft_model(self, model: Any) -> Any:
        """The model after a finished SFT phase (for the GRPO reference after a resume)."""
        from tooln1.sft import SFTLoss
        from tooln1.update import OptimizerConfig, Updater

        ckpt = self._checkpointer("sft")
        try:
            meta = ckpt.restore_meta()
            if meta is None or not meta.get("done"):
                return None
            updater = Updater(model, SFTLoss(), OptimizerConfig.from_mapping(self.cfg.sft.optimizer), donate=False)
            like = updater.init(model)
            state, _ = ckpt.restore(like)
            return updater.model(state)
        finally:
            ckpt.close()

    # -- GRPO -------------------------------------------------------------------------------
    def run_grpo(self, model: Any) -> tuple[Any, PhaseResult]:
        import jax
        from jax.experimental import multihost_utils

        from tooln1.data.iterator import BatchIterator, global_array
        from tooln1.grpo import GRPOLoss, compute_advantages
        from tooln1.metrics import Progress, peak_flops, update_flops
        from tooln1.rollout import Rollouts
        from tooln1.sampling import SamplingConfig
        from tooln1.update import OptimizerConfig, ReferencePolicy, Updater

        cfg = self.cfg.grpo
        res = PhaseResult()
        G = cfg.group_size
        iterator = BatchIterator(len(self.train_records), cfg.batch_size, seed=self.cfg.data.seed)
        total = cfg.steps or cfg.epochs * iterator.steps_per_epoch
        # One optimizer step per rollout batch: the old policy is the current one (no recompute).
        loss_fn = GRPOLoss(clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef, loss_agg=cfg.loss_agg,
                           temperature=cfg.temperature, logprob_chunk_size=cfg.logprob_chunk_size or None,
                           on_policy=cfg.num_mini_batches == 1, group_size=G if cfg.share_prompt else 1)
        updater = Updater(model, loss_fn, OptimizerConfig.from_mapping(cfg.optimizer),
                          num_mini_batches=cfg.num_mini_batches, micro_batch_size=cfg.micro_batch_size or None)
        # The reference is the frozen policy at the start of GRPO: copy it before the first step.
        reference = ReferencePolicy(nnx_params(model), offload_to_host=cfg.ref_offload) if cfg.kl_coef > 0 else None
        state = updater.init(model)
        ckpt = self._checkpointer("grpo")
        step = 0
        extra: dict[str, Any] = {}
        restored = ckpt.restore(state) if self.cfg.checkpoint.resume else None
        if restored is not None:
            state, meta = restored
            step = int(meta["step"])
            iterator.set_state(meta["data"])
            extra = {k: meta[k] for k in ("val_before",) if k in meta}
            res.val_before = extra.get("val_before")
            self.say(f"GRPO: resumed from {ckpt.directory} step {step}")
        if step == 0 and self.cfg.eval.at_start:
            res.val_before = self.validate(model, 0, "before GRPO")
            extra["val_before"] = res.val_before
        if step >= total:
            ckpt.close()
            return updater.model(state), res
        self.say(f"GRPO: {total} steps of {cfg.batch_size} prompts × G={G} (T={cfg.temperature}, "
                 f"{cfg.max_response_tokens} new tokens max), {cfg.num_mini_batches} mini-batches, lr "
                 f"{cfg.optimizer.learning_rate}, kl {cfg.kl_coef}, reward {cfg.reward!r}, loss aggregation "
                 f"{cfg.loss_agg!r}")
        sampling = SamplingConfig(num_samples=G, max_new_tokens=cfg.max_response_tokens, temperature=cfg.temperature,
                                  top_p=cfg.top_p, top_k=cfg.top_k, eos_ids=self.eos_ids, pad_id=self.pad_id,
                                  **self._prompt_buckets())
        peak = peak_flops(self.cfg.log.peak_tflops)
        lp_micro = cfg.logprob_micro_batch_size or cfg.micro_batch_size or (cfg.batch_size * G // cfg.num_mini_batches)
        bar = Progress(total, step, "grpo", self.cfg.log.progress)
        t_phase = time.perf_counter()
        eval_every = self.cfg.eval.every
        policy = updater.model(state)
        rollouts = Rollouts(policy, self.tokenizer, sampling, cfg.reward, cfg.reward_workers)
        refresh_s = rollouts.engine.refresh_seconds
        while step < total:
            t0 = time.perf_counter()
            idx = iterator.next()
            recs = [self.train_records[i] for i in idx]
            self._log_ids("grpo", step + 1, [r["id"] for r in recs])
            # 1. rollouts: G responses per prompt, each group scored on the host as it finishes
            toks = tokenize_prompts(recs, self.tokenizer)
            ids, mask = left_pad(toks, max(len(t) for t in toks), self.pad_id)
            rollout = rollouts.run(policy, ids, mask, [r["answer"] for r in recs], jax.random.fold_in(self.base_key, step))
            out, rewards, diag = rollout.out, rollout.rewards, rollout.diagnostics
            tokens, rmask = out.tokens, out.mask
            t1 = time.perf_counter()
            # 2. advantages
            advantages = np.asarray(compute_advantages(rewards, G))
            t2 = time.perf_counter()
            # 3. update
            lengths = rmask.sum(-1)
            longest = int(lengths.max())
            if jax.process_count() > 1:  # the global update batch needs one response length everywhere
                longest = int(multihost_utils.process_allgather(np.int32(longest)).max())
            r_len = min(_bucket(longest), tokens.shape[1]) if cfg.trim_responses else tokens.shape[1]
            host = {"prompt_ids": np.asarray(out.prompt_ids), "prompt_mask": np.asarray(out.prompt_mask),
                    "response_ids": tokens[:, :r_len], "response_mask": rmask[:, :r_len],
                    "advantages": advantages.astype(np.float32)}
            batch = {k: global_array(v, self.mesh) for k, v in host.items()}
            if not loss_fn.on_policy:
                batch["old_logprobs"] = updater.compute_logprobs(state.params, batch, lp_micro)
            if reference is not None:
                batch["ref_logprobs"] = updater.compute_logprobs(reference.params(), batch, lp_micro)
            state, metrics = updater.step(state, batch)
            metrics = jax.device_get(metrics)
            policy = updater.model(state)
            refresh_s = rollouts.refresh(policy)
            t3 = time.perf_counter()
            step += 1
            self.loop_steps += 1
            if metrics["skipped"] > 0:
                self.say(f"GRPO step {step}: non-finite loss or gradient in {int(metrics['skipped'])} of "
                         f"{cfg.num_mini_batches} mini-batch(es) (loss={float(metrics['loss'])}); that update was skipped")
            real_tokens = float(host["prompt_mask"].sum() + lengths.sum())
            rows, seq = host["prompt_ids"].shape[0], host["prompt_ids"].shape[1] + r_len
            scalars = {
                "reward/mean": rewards.mean(), "reward/std": rewards.std(),
                **{f"reward/{k}": v.mean() for k, v in diag.items()},
                "response/length_mean": lengths.mean(), "response/length_min": lengths.min(),
                "response/length_max": lengths.max(), "response/truncated": float((rmask[:, -1] > 0).mean()),
                "loss/total": metrics["loss"], "loss/pg": metrics["pg_loss"], "loss/kl": metrics["kl"],
                "loss/entropy": metrics.get("entropy", np.nan), "loss/clip_frac": metrics["clip_frac"],
                "loss/ratio_max": metrics["ratio_max"], "loss/ratio_min": metrics["ratio_min"],
                "loss/approx_kl_old": metrics["approx_kl_old"],
                "optim/grad_norm": metrics["grad_norm"], "optim/grad_norm_max": metrics["grad_norm_max"],
                "optim/learning_rate": metrics.get("learning_rate", np.nan), "optim/skipped": metrics["skipped"],
                "groups/all_equal": float((np.ptp(rewards.reshape(-1, G), axis=1) == 0).mean()),
                "perf/tokens_per_s": real_tokens * iterator.process_count / (t3 - t0),
                "time/sample": t1 - t0, "time/update": t3 - t2, "time/step": t3 - t0,
                # scoring overlaps decoding: score = what was left after the device finished
                "time/score": rollout.timings["score_tail"] + t2 - t1, "time/rollout_device": rollout.timings["device"],
                "time/refresh_weights": refresh_s,
                "perf/mfu": update_flops(policy.config, rows, seq, reference is not None) / (t3 - t2) / peak,
                "data/epoch": float(iterator.state.epoch),
            }
            if step % self.cfg.log.every == 0 or step == total:
                self.writer.write(step, scalars, phase="grpo", loss_agg=cfg.loss_agg)
            bar.update({"reward": float(rewards.mean()), "kl": float(metrics["kl"]),
                        "len": float(lengths.mean()), "tok/s": scalars["perf/tokens_per_s"]})
            if eval_every and step % eval_every == 0 and step < total:
                self.validate(policy, step, "GRPO")
            every = self.cfg.checkpoint.every
            if step == total or (every and step % every == 0):
                ckpt.save(step, state, self._meta("grpo", step, iterator, step == total, loss_agg=cfg.loss_agg, **extra))
            if self._killed():
                break
        bar.close()
        ckpt.close()
        res.steps, res.seconds = step, time.perf_counter() - t_phase
        return policy, res

    # -- the whole run ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.setup()
        summary: dict[str, Any] = {"workdir": self.workdir, "model_path": self.model_path,
                                   "loss_agg": {"sft": cfg.sft.loss_agg if cfg.sft.enabled else None,
                                                "grpo": cfg.grpo.loss_agg if cfg.grpo.enabled else None}}
        model = self.model
        grpo_started = False
        if cfg.grpo.enabled and cfg.checkpoint.resume:
            ck = self._checkpointer("grpo")
            grpo_started = ck.latest_step() is not None
            ck.close()
        if cfg.sft.enabled:
            if grpo_started:
                post = self._post_sft_model(model)
                if post is None:
                    raise RuntimeError(f"{self.workdir}: a GRPO checkpoint exists but no finished SFT checkpoint; "
                                       "cannot rebuild the GRPO reference policy")
                model = post
            else:
                model, sft_res = self.run_sft(model)
                summary["sft_steps"], summary["sft_seconds"] = sft_res.steps, sft_res.seconds
                if self._killed():
                    return self._finish(summary, killed=True)
                if not cfg.grpo.enabled:
                    summary["val_after_sft"] = self.validate(model, sft_res.steps, "after SFT")
        if cfg.grpo.enabled:
            model, res = self.run_grpo(model)
            summary["grpo_steps"], summary["grpo_seconds"] = res.steps, res.seconds
            summary["val_before_grpo"] = res.val_before
            if self._killed():
                return self._finish(summary, killed=True)
            summary["val_after_grpo"] = self.validate(model, res.steps, "after GRPO")
        if cfg.export.enabled:
            out = cfg.export.dir or os.path.join(self.workdir, "hf_export")
            model.save_pretrained(out)
            if self.process_index == 0 and not os.path.isfile(os.path.join(out, "tokenizer_config.json")):
                self.tokenizer.save_pretrained(out)
            summary["export_dir"] = out
            self.say(f"exported the policy as an HF checkpoint to {out}")
        self.final_model = model
        return self._finish(summary)

    def _finish(self, summary: dict[str, Any], killed: bool = False) -> dict[str, Any]:
        summary["killed"] = killed
        summary["wall_seconds"] = time.perf_counter() - self.t_start
        self.writer.close()
        if not killed and self.process_index == 0:
            with open(os.path.join(self.workdir, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2, sort_keys=True)
            if summary.get("val_before_grpo") is not None:
                self.say(f"validation reward before GRPO: {summary['val_before_grpo']:.3f}  after GRPO: "
                         f"{summary['val_after_grpo']:.3f}  ({summary['wall_seconds']:.0f} s in all)")
        return summary


def nnx_params(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model, nnx.Param)


def jax_key(seed: int):
    import jax

    return jax.random.key(seed)


def train(cfg: Any) -> dict[str, Any]:
    """Run a config (an ml-collections ConfigDict); returns the summary (also in <workdir>/summary.json)."""
    return Trainer(cfg).run()


# =============================================================================================
# command line


def _absl_main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"tooln1-train: unexpected arguments {argv[1:]}; use --config FILE --config.key=value")
    cfg = flags.FLAGS.config
    if cfg is None:
        raise SystemExit("tooln1-train: --config is required, e.g. --config configs/quickstart.py")
    try:
        train(cfg)
    except ConfigError as e:
        print(f"tooln1-train: {e}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    """``tooln1-train --config configs/<file>.py[:spec] --config.key=value``."""
    from absl import app, flags
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, "ml-collections config file (configs/*.py[:spec])",
                                        lock_config=True)
    logging.basicConfig(level=logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    except ImportError:
        pass
    app.run(_absl_main, argv=list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
