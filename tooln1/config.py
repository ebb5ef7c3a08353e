"""Configuration checks for ``tooln1-train``, run before anything is built or compiled.

:func:`validate_config` collects every problem of a config into one :class:`ConfigError` that names
the offending keys; :func:`check_override_keys` turns a misspelled ``--config.KEY=VALUE`` into the
closest existing keys. The keys themselves are documented in docs/training.md.
"""
from __future__ import annotations

import difflib
import importlib.util
import math
import os
from types import ModuleType
from typing import Any, Iterable

from tooln1.data.sources import looks_like_hub_id, parse_data_spec


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


# =============================================================================================
# configuration checks (before anything is compiled)


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


def _check_spec(key: str, spec: str) -> None:
    try:
        kind, location, _ = parse_data_spec(spec)
    except ValueError as e:
        raise ConfigError(f"config.{key}: {e}") from None
    if kind == "synthetic":
        n, _, seed = location.partition(":")
        if not n.isdigit() or (seed and not seed.isdigit()):
            raise ConfigError(f"config.{key}: bad synthetic spec {spec!r}; expected {spec.partition(':')[0]}:N[:SEED]")
        return
    if kind not in ("xlam", "toolace", "prepared"):
        raise ConfigError(f"config.{key}: unknown data source kind {kind!r} in {spec!r}; "
                          "expected xlam, toolace, synthetic, synthetic-simple, synthetic-tiny or prepared")
    if os.path.exists(location):
        return
    if kind != "prepared" and looks_like_hub_id(location):
        return  # a hub id; `datasets` resolves it (or says it cannot, offline)
    raise ConfigError(f"config.{key}: data path {location!r} (in {spec!r}) does not exist")


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
    from tooln1.models.config import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES

    need(cfg.model.attention in ATTENTION_IMPLEMENTATIONS,
         f"config.model.attention={cfg.model.attention!r}: expected one of {list(ATTENTION_IMPLEMENTATIONS)}")
    need(cfg.model.remat_policy in REMAT_POLICIES,
         f"config.model.remat_policy={cfg.model.remat_policy!r}: expected one of {list(REMAT_POLICIES)}")
    need(cfg.model.frozen_layers >= 0, f"config.model.frozen_layers={cfg.model.frozen_layers} must be >= 0 (0 = train every layer)")
    need(cfg.grpo.rollout_slots >= 0, f"config.grpo.rollout_slots={cfg.grpo.rollout_slots} must be >= 0 (0 = the engine's default)")
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
    specs = split_specs(cfg.data.sources)
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
        ratios = parse_ratios(cfg.data.mix_ratios)
        kinds = {source_kind(s) for s in specs}
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
    need(cfg.eval.rollout_slots >= 0, f"config.eval.rollout_slots={cfg.eval.rollout_slots} must be >= 0 (0 = the engine's default)")
    need(cfg.grpo.prompt_bucket >= 0, f"config.grpo.prompt_bucket={cfg.grpo.prompt_bucket} must be >= 0")
    need(cfg.checkpoint.keep >= 1, f"config.checkpoint.keep={cfg.checkpoint.keep} must be >= 1")
    need(cfg.checkpoint.every >= 0, "config.checkpoint.every must be >= 0 (0 = only at phase ends)")
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


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
        hint = f"; did you mean {' or '.join(ranked)}?" if ranked else "; see docs/training.md for the keys"
        errors.append(f"--config.{key}: no such config key{hint}")
    if errors:
        raise ConfigError("; ".join(errors))


# =============================================================================================
# config files: Python files loaded by path (ml-collections style), not importable modules


def load_file(path: str) -> ModuleType:
    """Execute the Python file at ``path`` as a fresh module (configs/*.py, and their shared common.py)."""
    name = "tooln1_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sibling(config_file: str, name: str = "common.py") -> ModuleType:
    """The file ``name`` next to ``config_file`` (a config's ``__file__``), loaded with `load_file`."""
    return load_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))
