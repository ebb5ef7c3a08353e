"""Every ``tooln1-train`` config key in one place: typed sections with their defaults (the paper's
Table 6 run: Qwen2.5-7B-Instruct, xLAM + ToolACE, GRPO on 8 GPUs) and a one-line help each.

Configs stay ml-collections ConfigDicts (:func:`base_config`, overridable with ``--config.KEY=VALUE``);
:func:`typed` reads one back into these dataclasses for the checks, :func:`keys` lists the keys for
``tooln1-train --help`` and docs/training.md.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import field
from typing import Any, NamedTuple

import ml_collections


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


def _key(default: Any, help: str) -> Any:  # a leaf key: its default and its one-line help
    return field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TinySection:
    """A random tiny checkpoint made on the fly (tests, quickstart)."""

    enabled: bool = _key(False, "make a random tiny checkpoint (in <workdir>/tiny_model unless model.path is set) "
                                "when model.path holds none")
    layers: int = _key(2, "its decoder blocks")
    hidden: int = _key(64, "its hidden size")
    heads: int = _key(4, "its attention heads")
    kv_heads: int = _key(2, "its key/value heads")
    intermediate: int = _key(128, "its MLP width")
    seed: int = _key(0, "its initialisation seed")


@dataclasses.dataclass(frozen=True)
class LoRASection:
    """Low-rank adapters: only they are trained, the base weights stay frozen (tooln1.models.lora)."""

    rank: int = _key(0, "adapter rank r; > 0 turns LoRA on (0 = full fine-tuning)")
    alpha: float = _key(16.0, "adapter scale numerator: a projection adds (alpha / rank) * x A B")
    dropout: float = _key(0.0, "dropout on the adapters' input; only 0 (GRPO's ratio needs the sampling policy)")
    targets: str = _key("q,k,v,o,gate,up,down", "comma-separated projections that get adapters")
    quantize: str = _key("none", "hold the frozen base as none, int8 or int4 (QLoRA; per-channel scales)")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The policy."""

    preset: str = _key("qwen2.5-7b", "tooln1.models.PRESETS key the checkpoint's config.json is checked against "
                                     "(\"\" = no check)")
    path: str = _key("checkpoints/Qwen2.5-7B-Instruct", "HF checkpoint directory (config.json, safetensors, tokenizer)")
    tokenizer: str = _key("", "tokenizer directory (\"\" = model.path)")
    dtype: str = _key("float32", "parameter dtype: float32, bfloat16 or float16 (the paper trains fp32 params)")
    compute_dtype: str = _key("bfloat16", "activation dtype: float32, bfloat16 or float16")
    remat: bool = _key(True, "recompute each block in the backward pass instead of keeping its activations")
    remat_policy: str = _key("full", "what remat keeps: full (nothing), dots (matmul outputs), offload (them, in "
                                     "host memory)")
    attention: str = _key("auto", "auto, dense, blockwise, splash or cudnn (tooln1.models.attention)")
    scan_layers: bool = _key(True, "scan over the blocks; False unrolls them (debugging: program size grows "
                                   "with depth)")
    frozen_layers: int = _key(0, "train only the blocks above the lowest N, the embedding (and a tied head) "
                                 "frozen too; 0 = full fine-tuning")
    tiny: TinySection = field(default_factory=TinySection)
    lora: LoRASection = field(default_factory=LoRASection)


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """The device mesh."""

    preset: str = _key("gpu8", "the mesh preset these values came from (tooln1.config.presets.MESHES)")
    data: int = _key(1, "data-parallel axis size (one of data, fsdp, tensor may be -1: the remaining devices)")
    fsdp: int = _key(8, "fully-sharded data-parallel axis size")
    tensor: int = _key(1, "tensor-parallel axis size")
    num_devices: int = _key(8, "devices the mesh expects (0 = any)")
    target: str = _key("h100-80gb:8", "what tooln1-fit compiles for (tooln1.preflight.targets)")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Training and validation records."""

    sources: str = _key("xlam:Salesforce/xlam-function-calling-60k,toolace:Team-ACE/ToolACE",
                        "comma-separated specs: xlam:, toolace: (path or hub id), synthetic:N[:SEED], "
                        "synthetic-simple:N[:SEED], synthetic-tiny:N[:SEED], prepared:PATH; multi-turn "
                        "(grpo.max_turns > 1): synthetic-lookup:N[:SEED[:CARELESS]], toolace-trajectories:, "
                        "bfcl-multi-turn:SPLIT[:CATEGORY]")
    mix_ratios: str = _key("", "mixing ratios per source kind, e.g. xlam=1.0,toolace=2.0 (\"\" = as loaded)")
    irrelevance: float = _key(0.0, "fraction of single-turn records copied as no-call examples")
    val_spec: str = _key("", "held-out data spec (\"\" = split data.val_size records off the training data)")
    val_size: int = _key(256, "validation records split off the training data")
    max_prompt_tokens: int = _key(4096, "records whose rendered prompt is longer are dropped")
    seed: int = _key(0, "shuffle, split and mix seed")


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """AdamW with global-norm clipping."""

    learning_rate: float = _key(1e-6, "AdamW learning rate, constant from the first step")
    b1: float = _key(0.9, "AdamW beta1")
    b2: float = _key(0.999, "AdamW beta2")
    eps: float = _key(1e-8, "AdamW epsilon")
    weight_decay: float = _key(0.01, "decoupled weight decay, on every parameter")
    max_grad_norm: float = _key(1.0, "clip gradients to this global norm")


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """The SFT phase."""

    enabled: bool = _key(False, "run SFT first")
    target: str = _key("reason", "reply trained on: reason (<think>..</think><tool_call>..</tool_call>) or "
                                 "no_reason (<tool_call> only)")
    think_text: str = _key("I need to call {names} with the values given in the question.",
                           "think text of a record without a reasoning field ({names}: the called tools)")
    epochs: int = _key(1, "passes over the training records")
    steps: int = _key(0, "optimizer steps; > 0 overrides sft.epochs")
    batch_size: int = _key(256, "examples per step")
    micro_batch_size: int = _key(0, "examples per gradient-accumulation micro-batch (0 = the whole batch)")
    max_seq_len: int = _key(4096 + 512, "padded length; longer examples are dropped and counted")
    loss_agg: str = _key("token-mean", "loss aggregation (tooln1.grpo.LOSS_AGG_MODES)")
    optimizer: OptimizerSection = field(default_factory=lambda: OptimizerSection(learning_rate=1e-5))


@dataclasses.dataclass(frozen=True)
class GRPOSection:
    """The GRPO phase."""

    enabled: bool = _key(True, "run GRPO")
    batch_size: int = _key(1024, "prompts per rollout step")
    group_size: int = _key(5, "G: responses sampled per prompt (>= 2)")
    epochs: int = _key(7, "passes over the training records")
    steps: int = _key(0, "rollout steps; > 0 overrides grpo.epochs")
    num_mini_batches: int = _key(4, "optimizer steps per rollout step")
    micro_batch_size: int = _key(40, "rows per gradient-accumulation micro-batch (0 = the whole mini-batch); "
                                     "the mesh presets set group_size x batch shards")
    logprob_micro_batch_size: int = _key(0, "rows per old/reference log-prob forward (0 = micro_batch_size)")
    temperature: float = _key(0.7, "sampling temperature (> 0); log-probs use logits / temperature")
    top_p: float = _key(1.0, "nucleus sampling (1 = off)")
    top_k: int = _key(0, "top-k sampling (0 = off)")
    max_response_tokens: int = _key(8192, "R: tokens sampled per response at most")
    prompt_bucket: int = _key(0, "pad prompts to a multiple of this (0 = powers of two): fewer compiled shapes")
    trim_responses: bool = _key(True, "update over the longest response's bucket (groups packed), not all R tokens")
    clip_eps: float = _key(0.2, "PPO clip range of the importance ratio")
    kl_coef: float = _key(1e-3, "weight of the k3 KL penalty to the reference policy (0 = no reference)")
    loss_agg: str = _key("token-mean", "token-mean, micro-token-mean (verl 0.2), seq-mean-token-mean or "
                                       "seq-mean-token-sum (see Loss aggregation)")
    reward: str = _key("binary", "binary, format_partial, format_name_partial or binary_no_think (Table 4)")
    reward_workers: int = _key(0, "score in this many worker processes (0 = in this one)")
    ref_offload: bool = _key(False, "keep the frozen reference params in host memory between uses")
    rollout_slots: int = _key(16, "the rollout engine's decode slots per batch shard, at most (0 = its default, up "
                                  "to 64): bounds the rollout's KV memory per device")
    logprob_chunk_size: int = _key(512, "LM-head positions at a time (0 = all): bounds the logits held at once")
    share_prompt: bool = _key(True, "score each group's prompt once, packed with its G responses: same values, "
                                    "P + G·R tokens instead of G·(P + R); micro-batch sizes must be multiples of "
                                    "group_size")
    max_turns: int = _key(1, "replies per trajectory; > 1 runs multi-turn rollouts in each record's environment "
                             "(tooln1.environments), training and validation")
    max_trajectory_tokens: int = _key(0, "multi-turn: replies and observations after the prompt at most (0 = "
                                         "max_turns × (max_response_tokens + 256))")
    tool_timeout_s: float = _key(10.0, "multi-turn: seconds a tool call may run before it answers with a timeout "
                                       "error")
    observation_chars: int = _key(16384, "multi-turn: a tool result longer than this is cut, with a note")
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Greedy validation."""

    every: int = _key(50, "SFT/GRPO steps between validations (0 = only before and after)")
    batch_size: int = _key(64, "validation prompts per greedy sampling call")
    rollout_slots: int = _key(32, "the engine's decode slots per batch shard for validation, at most (0 = its "
                                  "default, up to 64)")
    max_new_tokens: int = _key(1024, "tokens generated per validation response at most")
    at_start: bool = _key(True, "validate before GRPO")


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """Orbax checkpoints."""

    every: int = _key(25, "steps between checkpoints (0 = only at phase ends)")
    keep: int = _key(3, "checkpoints kept per phase")
    async_save: bool = _key(True, "write checkpoints in the background")
    resume: bool = _key(True, "continue from the workdir's latest checkpoint")


@dataclasses.dataclass(frozen=True)
class LogSection:
    """Metrics."""

    every: int = _key(1, "steps between tensorboard and metrics.jsonl writes")
    tensorboard: bool = _key(True, "write tensorboard event files")
    progress: bool = _key(True, "show a tqdm progress bar")
    peak_tflops: float = _key(0.0, "per-device peak for MFU (0 = from the device kind; CPU: a measured matmul)")
    data_ids: bool = _key(False, "write the record ids of every step to data_ids.jsonl")
    rollouts: int = _key(2, "GRPO rollouts written to rollouts.jsonl each step (text, reward; 0 = none)")


@dataclasses.dataclass(frozen=True)
class ExportSection:
    """The HF export at the end."""

    enabled: bool = _key(True, "export the final policy as an HF checkpoint")
    dir: str = _key("", "where (\"\" = <workdir>/hf_export)")


@dataclasses.dataclass(frozen=True)
class Config:
    """A tooln1-train run: its top-level keys and sections."""

    name: str = _key("tooln1", "run name")
    workdir: str = _key("runs/tooln1", "output directory: checkpoints, tensorboard, metrics.jsonl, hf_export/")
    seed: int = _key(0, "sampling seed; a checkpoint written under another seed is not resumed")
    compile_cache_dir: str = _key("", "JAX persistent compilation cache, a relative path under the workdir "
                                      "(\"\" = off)")
    model: ModelSection = field(default_factory=ModelSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    data: DataSection = field(default_factory=DataSection)
    sft: SFTSection = field(default_factory=SFTSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    export: ExportSection = field(default_factory=ExportSection)


def base_config() -> ml_collections.ConfigDict:
    """The schema's defaults as a ConfigDict: the paper's GRPO run (Table 6)."""
    return ml_collections.ConfigDict(dataclasses.asdict(Config()))


class Key(NamedTuple):
    """One config key: dotted name, default, help."""

    name: str
    default: Any
    help: str


def keys(section: Any = None, prefix: str = "") -> Iterator[Key]:
    """Every leaf key of the schema (of ``section``, default the whole :class:`Config`) in order."""
    section = Config() if section is None else section
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from keys(value, f"{prefix}{f.name}.")
        else:
            yield Key(prefix + f.name, value, f.metadata["help"])


def _typed_value(value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``, or None when it is not one (an int is a float, a bool no int)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return value if isinstance(value, bool) and isinstance(default, bool) else None
    if isinstance(default, float):
        return float(value) if isinstance(value, numbers.Real) else None
    if isinstance(default, int):
        return int(value) if isinstance(value, numbers.Integral) else None
    return value if isinstance(value, type(default)) else None


Values = Mapping[str, Any] | ml_collections.ConfigDict  # a config, or one of its sections


def _typed_section(default: Any, values: Values, prefix: str, errors: list[str]) -> Any:
    fields = {f.name for f in dataclasses.fields(default)}
    errors += [f"config.{prefix}{k}: no such config key" for k in sorted(set(values) - fields)]
    out = {}
    for name in fields:
        key, want = prefix + name, getattr(default, name)
        if name not in values:
            errors.append(f"config.{key} is missing")
        elif dataclasses.is_dataclass(want):
            if isinstance(values[name], (Mapping, ml_collections.ConfigDict)):
                out[name] = _typed_section(want, values[name], key + ".", errors)
            else:
                errors.append(f"config.{key}={values[name]!r}: expected a section of keys")
        else:
            out[name] = _typed_value(values[name], want)
            if out[name] is None:
                errors.append(f"config.{key}={values[name]!r}: expected {type(want).__name__}")
    return dataclasses.replace(default, **out)


def typed(cfg: Values) -> Config:
    """``cfg`` (a ConfigDict or dict) as a :class:`Config`; a :class:`ConfigError` names every key that
    is missing, unknown or of the wrong type."""
    errors: list[str] = []
    out = _typed_section(Config(), cfg, "", errors)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    return out
