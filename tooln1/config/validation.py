"""Configuration checks for ``tooln1-train``, run before anything is built or compiled.

:func:`validate_config` collects every problem of a config into one :class:`ConfigError` that names
the offending keys: each section checks its own keys, :func:`cross_section_problems` what spans
sections (and the devices); :func:`check_override_keys` turns a misspelled ``--config.KEY=VALUE``
into the closest existing keys.
"""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable
from typing import Any

from tooln1.config.schema import (
    CheckpointSection,
    Config,
    ConfigError,
    DataSection,
    EvalSection,
    GRPOSection,
    LogSection,
    MeshSection,
    ModelSection,
    SFTSection,
    typed,
)
from tooln1.data.sources import looks_like_hub_id, parse_data_spec

DTYPES = ("float32", "bfloat16", "float16")

# =============================================================================================
# data.sources and data.mix_ratios


def split_specs(sources: str) -> list[str]:
    """The data specs of a comma-separated ``data.sources``."""
    return [s.strip() for s in (sources or "").split(",") if s.strip()]


def parse_ratios(text: str) -> dict[str, float]:
    """``data.mix_ratios`` (``"xlam=1.0,toolace=2.0"``) as ``{kind: ratio}``."""
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


def source_kind(spec: str) -> str:
    """The mixing kind of a spec: every synthetic variant counts as ``synthetic``."""
    kind = spec.partition(":")[0]
    return "synthetic" if kind.startswith("synthetic") else kind


def _fraction(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False


def _spec_problem(key: str, spec: str) -> str | None:
    try:
        kind, location, _ = parse_data_spec(spec)
    except ValueError as e:
        return f"config.{key}: {e}"
    if kind == "synthetic":
        n, _, seed = location.partition(":")
        lookup = spec.startswith("synthetic-lookup:")
        careless = seed.partition(":")[2] if lookup else ""
        seed = seed.partition(":")[0] if lookup else seed
        if careless and not _fraction(careless):
            return (f"config.{key}: bad synthetic spec {spec!r}; CARELESS in synthetic-lookup:N:SEED:CARELESS "
                    "is a fraction in [0, 1]")
        if not n.isdigit() or (seed and not seed.isdigit()):
            form = "N[:SEED[:CARELESS]]" if lookup else "N[:SEED]"
            return f"config.{key}: bad synthetic spec {spec!r}; expected {spec.partition(':')[0]}:{form}"
        return None
    if kind == "bfcl-multi-turn":
        from tooln1.environments.bfcl import CATEGORIES

        split, _, category = location.partition(":")
        if split not in ("train", "eval", "all") or (category and category not in CATEGORIES):
            return (f"config.{key}: bad BFCL multi-turn spec {spec!r}; expected bfcl-multi-turn:SPLIT[:CATEGORY] "
                    f"with SPLIT train, eval or all and CATEGORY one of {list(CATEGORIES)}")
        return None
    if kind not in ("xlam", "toolace", "prepared"):
        return (f"config.{key}: unknown data source kind {kind!r} in {spec!r}; expected xlam, toolace, synthetic, "
                "synthetic-simple, synthetic-tiny, synthetic-lookup, bfcl-multi-turn or prepared")
    if os.path.exists(location) or (kind != "prepared" and looks_like_hub_id(location)):
        return None  # a local file, or a hub id `datasets` resolves (or says it cannot, offline)
    return f"config.{key}: data path {location!r} (in {spec!r}) does not exist"


# =============================================================================================
# one section each


def model_problems(m: ModelSection, check_paths: bool) -> list[str]:
    """``config.model``; ``check_paths``: also that the checkpoint and tokenizer directories exist."""
    from tooln1.models import PRESETS
    from tooln1.models.config import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES

    out = []
    if check_paths:
        if not m.path:
            if not m.tiny.enabled:
                out.append("config.model.path is empty (set it to an HF checkpoint dir, or model.tiny.enabled=True)")
        elif (not m.tiny.enabled or os.path.exists(m.path)) and not os.path.isfile(os.path.join(m.path, "config.json")):
            out.append(f"config.model.path: {m.path!r} is not an HF checkpoint directory (no config.json there)")
        if m.tokenizer and not os.path.isdir(m.tokenizer):
            out.append(f"config.model.tokenizer: directory {m.tokenizer!r} does not exist")
    out += [f"config.model.{key}={getattr(m, key)!r}: expected float32, bfloat16 or float16"
            for key in ("dtype", "compute_dtype") if getattr(m, key) not in DTYPES]
    if m.attention not in ATTENTION_IMPLEMENTATIONS:
        out.append(f"config.model.attention={m.attention!r}: expected one of {list(ATTENTION_IMPLEMENTATIONS)}")
    if m.remat_policy not in REMAT_POLICIES:
        out.append(f"config.model.remat_policy={m.remat_policy!r}: expected one of {list(REMAT_POLICIES)}")
    if m.frozen_layers < 0:
        out.append(f"config.model.frozen_layers={m.frozen_layers} must be >= 0 (0 = train every layer)")
    out += lora_problems(m)
    if m.preset and m.preset not in PRESETS:
        out.append(f"config.model.preset={m.preset!r}: unknown; known: {sorted(PRESETS)}")
    return out


def lora_problems(m: ModelSection) -> list[str]:
    from tooln1.models.config import BASE_QUANTIZATIONS, LORA_TARGETS

    lo, out = m.lora, []
    if lo.rank < 0:
        out.append(f"config.model.lora.rank={lo.rank} must be >= 0 (0 = no adapters)")
    if not lo.rank:
        if lo.quantize != "none":
            out.append(f"config.model.lora.quantize={lo.quantize!r} needs config.model.lora.rank > 0: a quantized "
                       "base is frozen, so only adapters could train")
        return out
    if lo.alpha <= 0:
        out.append(f"config.model.lora.alpha={lo.alpha} must be > 0")
    if lo.dropout != 0:
        out.append(f"config.model.lora.dropout={lo.dropout}: only 0 is supported (the update's importance ratio "
                   "compares the sampling policy with itself; dropout would make them differ)")
    targets = lora_targets(lo.targets)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        out.append(f"config.model.lora.targets={lo.targets!r}: expected a comma-separated subset of "
                   f"{','.join(LORA_TARGETS)}")
    if lo.quantize not in BASE_QUANTIZATIONS:
        out.append(f"config.model.lora.quantize={lo.quantize!r}: expected one of {list(BASE_QUANTIZATIONS)}")
    if m.frozen_layers:
        out.append(f"config.model.lora.rank={lo.rank} with config.model.frozen_layers={m.frozen_layers}: two ways "
                   "to train part of the model; choose one")
    return out


def lora_targets(spec: str) -> tuple[str, ...]:
    """The projections of ``model.lora.targets`` ("q,k,v" -> ("q", "k", "v"))."""
    return tuple(t.strip() for t in spec.split(",") if t.strip())


def mesh_problems(m: MeshSection, devices: int, processes: int, backend: str) -> list[str]:
    """The mesh against the ``devices`` of ``backend`` there are, over ``processes`` processes."""
    sizes = [m.data, m.fsdp, m.tensor]
    out = []
    if sizes.count(-1) > 1 or any((s < 1 and s != -1) for s in sizes):
        out.append(f"config.mesh: sizes data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} must be >= 1 (one may be -1)")
    else:
        known = math.prod(s for s in sizes if s != -1)
        # a -1 takes what divides; else at most the devices there are, and all of them across processes
        fixed_misfit = known > devices or (processes > 1 and known != devices)
        if (devices % known) if -1 in sizes else fixed_misfit:
            out.append(f"config.mesh: data={sizes[0]} × fsdp={sizes[1]} × tensor={sizes[2]} does not fit the "
                       f"{devices} available {backend} devices")
    if m.num_devices and m.num_devices != devices:
        out.append(f"config.mesh.num_devices={m.num_devices} (preset {m.preset!r}) but {devices} {backend} devices "
                   "are available")
    return out


def data_problems(d: DataSection, check_paths: bool) -> list[str]:
    """``config.data``; ``check_paths``: also that the local sources exist."""
    specs = split_specs(d.sources)
    out = [] if specs else ["config.data.sources is empty"]
    if check_paths:
        out += [p for p in [_spec_problem("data.sources", s) for s in specs] if p]
        if d.val_spec and (p := _spec_problem("data.val_spec", d.val_spec)):
            out.append(p)
    if d.val_size <= 0 and not d.val_spec:
        out.append("config.data.val_size must be > 0 (or set data.val_spec)")
    try:
        kinds = {source_kind(s) for s in specs}
        unknown = sorted(set(parse_ratios(d.mix_ratios)) - kinds)
        if unknown:
            out.append(f"config.data.mix_ratios names {unknown}, which are not among the sources {sorted(kinds)}")
    except ConfigError as e:
        out.append(str(e))
    if not 0.0 <= d.irrelevance <= 1.0:
        out.append(f"config.data.irrelevance={d.irrelevance} must be in [0, 1]")
    if d.max_prompt_tokens < 1:
        out.append("config.data.max_prompt_tokens must be >= 1")
    return out


def sft_problems(s: SFTSection) -> list[str]:
    """``config.sft``, when SFT runs."""
    from tooln1.grpo import LOSS_AGG_MODES

    if not s.enabled:
        return []
    out = []
    if s.target not in ("reason", "no_reason"):
        out.append(f"config.sft.target={s.target!r}: expected 'reason' or 'no_reason'")
    if s.steps <= 0 and s.epochs <= 0:
        out.append("config.sft: set steps > 0 or epochs > 0")
    if s.batch_size < 1:
        out.append(f"config.sft.batch_size={s.batch_size} must be >= 1")
    elif s.batch_size % (s.micro_batch_size or s.batch_size):
        out.append(f"config.sft.batch_size={s.batch_size} is not a multiple of config.sft.micro_batch_size="
                   f"{s.micro_batch_size}")
    if s.loss_agg not in LOSS_AGG_MODES:
        out.append(f"config.sft.loss_agg={s.loss_agg!r}: expected one of {LOSS_AGG_MODES}")
    if s.max_seq_len < 2:
        out.append("config.sft.max_seq_len must be >= 2")
    return out


def grpo_micro_batches(g: GRPOSection) -> tuple[int, int, int] | None:
    """(mini-batch, micro-batch, log-prob micro-batch) rows of a GRPO step, or None when
    ``grpo.num_mini_batches`` does not split its responses."""
    rows, m = g.batch_size * max(g.group_size, 1), g.num_mini_batches
    if rows < 1 or m < 1 or rows % m:
        return None
    micro = g.micro_batch_size or rows // m
    return rows // m, micro, g.logprob_micro_batch_size or micro


def grpo_problems(g: GRPOSection) -> list[str]:
    """``config.grpo``: its engine slots and prompt padding always (validation samples with them too),
    the rest when GRPO runs."""
    from tooln1.grpo import LOSS_AGG_MODES
    from tooln1.reward import KINDS

    out = []
    if g.rollout_slots < 0:
        out.append(f"config.grpo.rollout_slots={g.rollout_slots} must be >= 0 (0 = the engine's default)")
    if g.prompt_bucket < 0:
        out.append(f"config.grpo.prompt_bucket={g.prompt_bucket} must be >= 0")
    if g.max_turns < 1:
        out.append(f"config.grpo.max_turns={g.max_turns} must be >= 1 (1 = the paper's single turn)")
    if g.max_trajectory_tokens < 0 or g.observation_chars < 1 or not g.tool_timeout_s > 0:
        out.append("config.grpo: max_trajectory_tokens must be >= 0, observation_chars >= 1 and tool_timeout_s > 0")
    if not g.enabled:
        return out
    if g.reward not in KINDS:
        out.append(f"config.grpo.reward={g.reward!r}: unknown reward kind; expected one of {list(KINDS)}")
    if g.group_size < 2:
        out.append(f"config.grpo.group_size={g.group_size}: GRPO needs at least 2 samples per prompt "
                   "(group-relative advantages of a group of one carry no signal)")
    if g.steps <= 0 and g.epochs <= 0:
        out.append("config.grpo: set steps > 0 or epochs > 0")
    if g.batch_size < 1:
        out.append(f"config.grpo.batch_size={g.batch_size} must be >= 1")
    if g.temperature <= 0:
        out.append(f"config.grpo.temperature={g.temperature}: GRPO needs sampling (temperature > 0)")
    if not 0 < g.top_p <= 1:
        out.append(f"config.grpo.top_p={g.top_p} must be in (0, 1]")
    if g.max_response_tokens < 1:
        out.append("config.grpo.max_response_tokens must be >= 1")
    if g.loss_agg not in LOSS_AGG_MODES:
        out.append(f"config.grpo.loss_agg={g.loss_agg!r}: expected one of {LOSS_AGG_MODES}")
    if g.clip_eps < 0 or g.kl_coef < 0:
        out.append("config.grpo.clip_eps and config.grpo.kl_coef must be >= 0")
    rows = g.batch_size * max(g.group_size, 1)
    if (batches := grpo_micro_batches(g)) is None:
        if rows >= 1:  # else config.grpo.batch_size is named above
            out.append(f"config.grpo.num_mini_batches={g.num_mini_batches} does not divide the {rows} responses "
                       f"per step (config.grpo.batch_size={g.batch_size} × group_size={g.group_size})")
        return out
    mini, micro, lp_micro = batches
    if mini % micro:
        out.append(f"config.grpo.micro_batch_size={micro} does not divide a mini-batch of {mini} rows")
    if rows % lp_micro:
        out.append(f"config.grpo.logprob_micro_batch_size={lp_micro} does not divide {rows} rows")
    if g.share_prompt and g.group_size >= 1 and (micro % g.group_size or lp_micro % g.group_size):
        out.append(f"config.grpo.share_prompt packs whole groups: micro_batch_size={micro} and "
                   f"logprob_micro_batch_size={lp_micro} must be multiples of group_size={g.group_size}")
    return out


def eval_problems(e: EvalSection) -> list[str]:
    """``config.eval``."""
    out = []
    if e.batch_size < 1 or e.max_new_tokens < 1:
        out.append("config.eval.batch_size and max_new_tokens must be >= 1")
    if e.rollout_slots < 0:
        out.append(f"config.eval.rollout_slots={e.rollout_slots} must be >= 0 (0 = the engine's default)")
    return out


def checkpoint_problems(c: CheckpointSection) -> list[str]:
    """``config.checkpoint``."""
    out = []
    if c.keep < 1:
        out.append(f"config.checkpoint.keep={c.keep} must be >= 1")
    if c.every < 0:
        out.append("config.checkpoint.every must be >= 0 (0 = only at phase ends)")
    return out


def log_problems(c: LogSection) -> list[str]:
    """``config.log``."""
    out = []
    if c.every < 1:
        out.append(f"config.log.every={c.every} must be >= 1 (steps between metric writes)")
    if c.rollouts < 0:
        out.append(f"config.log.rollouts={c.rollouts} must be >= 0 (0 = no rollouts.jsonl)")
    return out


# =============================================================================================
# across sections


def cross_section_problems(c: Config, shards: int, processes: int) -> list[str]:
    """What spans sections: a phase to run, and the batches against the mesh's ``shards`` batch shards
    (data × fsdp) and the ``processes`` that load them."""
    sft, grpo = c.sft, c.grpo
    out = []
    if not sft.enabled and not grpo.enabled:
        out.append("config.sft.enabled and config.grpo.enabled are both False: nothing to train")
    if sft.enabled and sft.batch_size >= 1:
        micro = sft.micro_batch_size or sft.batch_size
        if micro % shards:
            out.append(f"config.sft: micro-batch of {micro} rows is not divisible by the mesh's data×fsdp size "
                       f"{shards} (config.mesh)")
        if sft.batch_size % processes:
            out.append(f"config.sft.batch_size={sft.batch_size} is not divisible by the {processes} processes")
    if grpo.enabled:
        batches = grpo_micro_batches(grpo)
        if batches and batches[0] % batches[1] == 0 and batches[1] % shards:
            out.append(f"config.grpo: a micro-batch of {batches[1]} rows is not divisible by the mesh's data×fsdp "
                       f"size {shards} (config.grpo.batch_size / group_size / num_mini_batches / micro_batch_size "
                       "vs config.mesh)")
        if grpo.batch_size % processes:
            out.append(f"config.grpo.batch_size={grpo.batch_size} is not divisible by the {processes} processes")
    return out


def mesh_batch_shards(cfg: Any) -> int:
    """Devices the batch is split over (data × fsdp) for the configured mesh."""
    import jax

    from tooln1.sharding import batch_shards, resolve_mesh_shape

    shape = {"data": int(cfg.mesh.data), "fsdp": int(cfg.mesh.fsdp), "tensor": int(cfg.mesh.tensor)}
    # without a -1 the mesh may use fewer devices than there are (the first ones)
    devices = len(jax.devices()) if -1 in shape.values() else math.prod(shape.values())
    return batch_shards(resolve_mesh_shape(shape, devices))


def validate_config(cfg: Any, check_paths: bool = True) -> None:
    """Raise :class:`ConfigError` with one message naming every offending key."""
    import jax  # here, not at import: config files import this package without needing JAX

    c = typed(cfg)
    devices, processes = len(jax.devices()), jax.process_count()
    mesh = mesh_problems(c.mesh, devices, processes, jax.default_backend())
    shards = 1 if any(p.startswith("config.mesh:") for p in mesh) else mesh_batch_shards(c)
    errors = (model_problems(c.model, check_paths) + mesh + data_problems(c.data, check_paths)
              + sft_problems(c.sft) + grpo_problems(c.grpo) + eval_problems(c.eval)
              + checkpoint_problems(c.checkpoint) + log_problems(c.log) + cross_section_problems(c, shards, processes))
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


# =============================================================================================
# --config.KEY overrides


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a ConfigDict (``grpo.optimizer.learning_rate``, …), sections included."""
    keys = []
    for name, value in cfg.items():
        key = prefix + name
        keys.append(key)
        if hasattr(value, "items"):
            keys += config_keys(value, key + ".")
    return keys


# Names other trainers use for our keys.
ALIASES = {"output_dir": "workdir", "out_dir": "workdir", "run_dir": "workdir", "logdir": "workdir",
           "log_dir": "workdir", "save_dir": "workdir", "checkpoint_dir": "workdir"}


def check_override_keys(cfg: Any, overrides: Iterable[str]) -> None:
    """:class:`ConfigError` listing each ``--config.KEY`` override that ``cfg`` lacks, with the closest
    existing keys (by the whole dotted key and by its last part, e.g. ``grpo.lerning_rate`` →
    ``grpo.optimizer.learning_rate``)."""
    known = config_keys(cfg)
    errors = []
    for key in overrides:
        if key in known:
            continue
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = [k for k in known if difflib.SequenceMatcher(None, leaf, k.rsplit(".", 1)[-1]).ratio() >= 0.75]
        similar = by_leaf or difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        ranked = sorted(similar, key=lambda k: -difflib.SequenceMatcher(None, key, k).ratio())
        ranked = list(dict.fromkeys(([ALIASES[leaf]] if leaf in ALIASES else []) + ranked))[:3]
        hint = f"; did you mean {' or '.join(ranked)}?" if ranked else "; tooln1-train --help lists the keys"
        errors.append(f"--config.{key}: no such config key{hint}")
    if errors:
        raise ConfigError("; ".join(errors))
