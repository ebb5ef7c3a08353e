"""What every phase of a run reads: the config, mesh, model, tokenizer, records and metrics writer.

`build_context` makes it once per run; the phases (`tooln1.training.sft_phase`,
`tooln1.training.grpo_phase`) take it as an argument and never write to it, so the loop has no
object that its parts mutate behind each other's backs.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import numpy as np

import tooln1
from tooln1.checkpoints.hf_layout import CheckpointError
from tooln1.checkpoints.tiny import make_random_checkpoint
from tooln1.checkpoints.train_state import Checkpointer
from tooln1.config import ConfigError, parse_ratios, source_kind, split_specs
from tooln1.config.runtime import base_dtype, lora_options
from tooln1.data import add_irrelevance, filter_by_prompt_length, load_records_with_stats, mix, train_val_split
from tooln1.data.tokens import decode_responses
from tooln1.models import PRESETS, count_params
from tooln1.models.lora import add_adapters
from tooln1.rollout.sampling import eos_ids_for
from tooln1.sharding import make_mesh
from tooln1.training.metrics import MetricsWriter

log = logging.getLogger("tooln1.training")


def say(msg: str) -> None:
    """A progress line on process 0's stdout (and the log on every process)."""
    if jax.process_index() == 0:
        print(f"[tooln1-train] {msg}", flush=True)
    log.info(msg)


@dataclasses.dataclass(frozen=True)
class RunContext:
    cfg: Any
    workdir: str
    mesh: Any
    model: Any  # the policy the run starts from
    model_path: str
    tokenizer: Any
    eos_ids: tuple[int, ...]
    pad_id: int
    train_records: list[dict]
    val_records: list[dict]
    data_stats: dict[str, Any]
    writer: MetricsWriter
    base_key: Any  # jax.random key of config.seed; steps fold their index in

    @property
    def eos_text(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.eos_ids[0])

    def checkpointer(self, phase: str) -> Checkpointer:
        """The `Checkpointer` of ``<workdir>/checkpoints/<phase>``."""
        return phase_checkpointer(self.cfg, self.workdir, phase)

    def decode(self, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
        """Responses as text with special tokens kept and the trailing EOS dropped (what the reward reads)."""
        return decode_responses(self.tokenizer, tokens, mask, self.eos_ids)


def phase_checkpointer(cfg: Any, workdir: str, phase: str) -> Checkpointer:
    c = cfg.checkpoint
    return Checkpointer(os.path.join(workdir, "checkpoints", phase), keep=c.keep, async_save=c.async_save)


def build_context(cfg: Any, workdir: str) -> RunContext:
    """Load (or make) the checkpoint onto the mesh, the tokenizer and the data; open the metrics writer."""
    path = _model_path(cfg, workdir)
    mesh = _mesh(cfg)
    try:
        model = tooln1.load_model(path, dtype=base_dtype(cfg.model), mesh=mesh, compute_dtype=cfg.model.compute_dtype,
                                  remat=cfg.model.remat, remat_policy=cfg.model.remat_policy,
                                  attention=cfg.model.attention, scan_layers=cfg.model.scan_layers,
                                  frozen_layers=cfg.model.frozen_layers)
        if lora := lora_options(cfg.model):
            add_adapters(model, lora["lora_rank"], lora["lora_alpha"], lora["lora_targets"],
                         lora["base_quantization"], seed=cfg.seed, dtype=cfg.model.dtype)
    except CheckpointError:
        raise
    except ValueError as e:  # a config.model option the checkpoint's shape rules out (e.g. frozen_layers)
        raise ConfigError(f"config.model does not fit {path}: {e}") from None
    if cfg.model.preset:
        _warn_preset_mismatch(cfg.model.preset, model.config, path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or path)
    eos_ids = eos_ids_for(model, tokenizer)
    if not eos_ids:
        raise ConfigError(f"config.model.path={path!r}: no EOS token id in generation_config.json or the tokenizer")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    train, val, stats = load_data(cfg, tokenizer)
    say(f"model {path}: {count_params(model.config) / 1e6:.2f}M params, mesh {dict(mesh.shape)} "
        f"on {len(jax.devices())} {jax.default_backend()} device(s); workdir {workdir}")
    return RunContext(cfg=cfg, workdir=workdir, mesh=mesh, model=model, model_path=path, tokenizer=tokenizer,
                      eos_ids=tuple(eos_ids), pad_id=pad_id, train_records=train, val_records=val, data_stats=stats,
                      writer=MetricsWriter(workdir, tensorboard=cfg.log.tensorboard), base_key=jax.random.key(cfg.seed))


def _model_path(cfg: Any, workdir: str) -> str:
    """``model.path``, or a tiny random checkpoint made there (or in the workdir) when ``model.tiny`` asks."""
    path = cfg.model.path
    if not cfg.model.tiny.enabled or (path and os.path.isfile(os.path.join(path, "config.json"))):
        return path
    path = path or os.path.join(workdir, "tiny_model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        t = cfg.model.tiny
        if jax.process_index() == 0:
            make_random_checkpoint(path, layers=t.layers, hidden=t.hidden, heads=t.heads, kv_heads=t.kv_heads,
                                   intermediate=t.intermediate, seed=t.seed)
        if jax.process_count() > 1:  # the others load it next
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("tooln1 tiny checkpoint written")
        say(f"made a tiny random checkpoint in {path}")
    return path


def _mesh(cfg: Any) -> Any:
    shape = {"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor}
    devices = jax.devices()
    if -1 not in shape.values() and math.prod(shape.values()) < len(devices):
        devices = devices[: math.prod(shape.values())]  # a smaller mesh on the first devices
    return make_mesh(shape, devices=devices)


def _warn_preset_mismatch(name: str, got: Any, path: str) -> None:
    want = PRESETS[name]
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
    diff = {f: (getattr(got, f), getattr(want, f)) for f in fields if getattr(got, f) != getattr(want, f)}
    if diff:
        say(f"warning: checkpoint {path} differs from preset {name!r}: "
            + ", ".join(f"{k}={a} (preset {b})" for k, (a, b) in diff.items()))


def load_data(cfg: Any, tokenizer: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Training and validation records: sources → mix → irrelevance → length filter → split."""
    by_kind: dict[str, list[dict]] = {}
    stats: dict[str, Any] = {}
    for spec in split_specs(cfg.data.sources):
        records, st = load_records_with_stats(spec)
        by_kind.setdefault(source_kind(spec), []).extend(records)
        stats[spec] = {"kept": st.kept, "dropped": dict(st.dropped)}
    ratios = parse_ratios(cfg.data.mix_ratios)
    records = mix(by_kind, ratios, seed=cfg.data.seed) if (len(by_kind) > 1 or ratios) else by_kind[next(iter(by_kind))]
    if cfg.data.irrelevance > 0:
        records = add_irrelevance(records, cfg.data.irrelevance, seed=cfg.data.seed)
    records, counts = filter_by_prompt_length(records, tokenizer, cfg.data.max_prompt_tokens)
    stats["length_filter"] = counts
    if cfg.data.val_spec:
        val, _ = load_records_with_stats(cfg.data.val_spec)
        val, _ = filter_by_prompt_length(val, tokenizer, cfg.data.max_prompt_tokens)
        train = records
        val = val[: cfg.data.val_size] if cfg.data.val_size else val
    else:
        if cfg.data.val_size >= len(records):
            raise ConfigError(f"config.data.val_size={cfg.data.val_size} leaves no training data "
                              f"({len(records)} records after filtering)")
        train, val = train_val_split(records, val_size=cfg.data.val_size, seed=cfg.data.seed)
    stats.update(train=len(train), val=len(val))
    say(f"data: {len(train)} training / {len(val)} validation records "
        f"({counts['prompt_too_long']} dropped for prompts over {cfg.data.max_prompt_tokens} tokens)")
    return train, val, stats


__all__ = ["RunContext", "build_context", "load_data", "phase_checkpointer", "say"]
