"""Named settings a config spec picks (``configs/paper.py:model=qwen2.5-3b,mesh=tpu-v4-32``): the
paper's backbones, meshes, Table 3 recipes, Table 4 rewards and Table 5 data mixes, and the
``get_config`` spec parsing that applies them to a :func:`tooln1.config.base_config`."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, NamedTuple


class ModelPreset(NamedTuple):
    """A backbone: its ``tooln1.models.PRESETS`` key (checked against the checkpoint's config.json at
    start-up) and its default HF checkpoint directory."""

    preset: str
    path: str
    # (grpo.rollout_slots, eval.rollout_slots) where the defaults' KV pages do not fit (docs/scaling.md,
    # "The engine per batch shard"); None keeps the defaults
    rollout_slots: tuple[int, int] | None = None


MODELS = {
    "qwen2.5-0.5b": ModelPreset("qwen2.5-0.5b", "checkpoints/Qwen2.5-0.5B-Instruct"),
    "qwen2.5-1.5b": ModelPreset("qwen2.5-1.5b", "checkpoints/Qwen2.5-1.5B-Instruct"),
    "qwen2.5-3b": ModelPreset("qwen2.5-3b", "checkpoints/Qwen2.5-3B-Instruct"),
    "qwen2.5-7b": ModelPreset("qwen2.5-7b", "checkpoints/Qwen2.5-7B-Instruct"),
    # the 14B rollout on tpu-v5p-128 needs half the default slots to fit a chip
    "qwen2.5-14b": ModelPreset("qwen2.5-14b", "checkpoints/Qwen2.5-14B-Instruct", (8, 16)),
    # 8 KV heads, twice Qwen2.5-7B's KV pages per token
    "llama-3-8b": ModelPreset("llama-3-8b", "checkpoints/Meta-Llama-3-8B-Instruct", (8, 16)),
    "tiny": ModelPreset("", ""),  # a random tiny checkpoint made on the fly (tests, quickstart)
}


class MeshPreset(NamedTuple):
    """A mesh over (data, fsdp, tensor): -1 takes the remaining devices; the device count it expects
    (0 = any); the ``tooln1-fit`` target it is meant for (``tooln1.preflight.targets.TARGETS`` or ``cpu:N``)."""

    shape: dict[str, int]
    num_devices: int
    target: str


MESHES = {
    "cpu": MeshPreset({"data": 1, "fsdp": -1, "tensor": 1}, 0, "cpu:8"),
    "gpu1": MeshPreset({"data": 1, "fsdp": 1, "tensor": 1}, 1, "h100-80gb:1"),
    "gpu8": MeshPreset({"data": 1, "fsdp": 8, "tensor": 1}, 8, "h100-80gb:8"),
    "gpu8-h200": MeshPreset({"data": 1, "fsdp": 8, "tensor": 1}, 8, "h200:8"),  # the same node with 141 GB H200s
    "tpu-v4-32": MeshPreset({"data": 1, "fsdp": 16, "tensor": 1}, 16, "tpu-v4-32"),  # 16 chips; up to Qwen2.5-3B
    # Qwen2.5-7B on v4-32: 4-way tensor parallelism splits the decode weights and KV pools (docs/scaling.md)
    "tpu-v4-32-tp4": MeshPreset({"data": 1, "fsdp": 4, "tensor": 4}, 16, "tpu-v4-32"),
    # 16 GiB chips, up to Qwen2.5-1.5B: fsdp over all 64 leaves the most memory per chip
    "tpu-v5e-64": MeshPreset({"data": 1, "fsdp": 64, "tensor": 1}, 64, "tpu-v5e-64"),
    "tpu-v5p-128": MeshPreset({"data": 1, "fsdp": 64, "tensor": 1}, 64, "tpu-v5p-128"),  # 64 chips
}


class Recipe(NamedTuple):
    """A Table 3 training recipe."""

    sft: bool  # run SFT first
    sft_target: str  # "reason" or "no_reason"
    grpo: bool  # run GRPO


RECIPES = {
    "rl": Recipe(False, "reason", True),  # Tool-N1: GRPO straight from the instruct model
    "sft": Recipe(True, "no_reason", False),  # No-Reason SFT
    "reason-sft": Recipe(True, "reason", False),  # Reason-SFT
    "sft-rl": Recipe(True, "no_reason", True),  # No-Reason SFT -> RL
    "reason-sft-rl": Recipe(True, "reason", True),  # Reason-SFT -> RL
}

# Table 4 reward kinds (tooln1.reward.KINDS)
REWARDS = ("binary", "format_partial", "format_name_partial", "binary_no_think")


class DataMix(NamedTuple):
    """A Table 5 data mix: comma-separated source specs ({xlam}, {toolace}, {prepared}: their paths)
    and mixing ratios."""

    sources: str
    ratios: str = ""


DATA = {
    "xlam": DataMix("xlam:{xlam}"),
    "toolace": DataMix("toolace:{toolace}"),
    "xlam+toolace": DataMix("xlam:{xlam},toolace:{toolace}"),
    "prepared": DataMix("prepared:{prepared}"),
}
DEFAULT_DATA_PATHS = {
    "xlam": "Salesforce/xlam-function-calling-60k",
    "toolace": "Team-ACE/ToolACE",
    "prepared": "data/prepared/train.parquet",
}


def _pick(table: dict[str, Any] | tuple[str, ...], key: str, name: str) -> Any:
    if name not in table:
        raise ValueError(f"config spec {key}={name!r}: unknown; known: {sorted(table)}")
    return table[name] if isinstance(table, dict) else name


def apply_model(c: Any, name: str) -> None:
    """Point ``c`` at backbone ``name`` (:data:`MODELS`) and append it to ``c.name``."""
    m = _pick(MODELS, "model", name)
    c.model.preset, c.model.path = m.preset, m.path
    c.model.tiny.enabled = name == "tiny"
    if m.rollout_slots:
        c.grpo.rollout_slots, c.eval.rollout_slots = m.rollout_slots
    c.name = f"{c.name}-{name}"


def apply_mesh(c: Any, name: str) -> None:
    """Set ``c.mesh`` to preset ``name`` (:data:`MESHES`)."""
    m = _pick(MESHES, "mesh", name)
    c.mesh.preset, c.mesh.target, c.mesh.num_devices = name, m.target, m.num_devices
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = m.shape["data"], m.shape["fsdp"], m.shape["tensor"]
    if m.num_devices:  # one whole group per device and micro-batch: what share_prompt packs into one row
        c.grpo.micro_batch_size = c.grpo.group_size * m.shape["data"] * m.shape["fsdp"]
    if name == "cpu":
        c.model.compute_dtype = "float32"


def apply_recipe(c: Any, name: str) -> None:
    """Switch the phases of ``c`` to Table 3 recipe ``name`` (:data:`RECIPES`)."""
    r = _pick(RECIPES, "recipe", name)
    c.sft.enabled, c.sft.target, c.grpo.enabled = r.sft, r.sft_target, r.grpo


def apply_reward(c: Any, name: str) -> None:
    """Set the GRPO reward to Table 4 kind ``name`` (:data:`REWARDS`)."""
    c.grpo.reward = _pick(REWARDS, "reward", name)


def apply_data(c: Any, name: str, paths: dict[str, str] | None = None) -> None:
    """Set the training sources to Table 5 mix ``name`` (:data:`DATA`); ``paths`` override
    :data:`DEFAULT_DATA_PATHS`."""
    d = _pick(DATA, "data", name)
    c.data.sources = d.sources.format(**{**DEFAULT_DATA_PATHS, **(paths or {})})
    c.data.mix_ratios = d.ratios


def parse_spec(arg: str | None, known: Iterable[str]) -> dict[str, str]:
    """``"model=qwen2.5-7b,mesh=gpu8"`` -> dict; a key outside ``known`` is an error naming it."""
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"config spec part {part!r} must be key=value")
        out[key.strip()] = value.strip()
    unknown = sorted(set(out) - set(known))
    if unknown:
        raise ValueError(f"unknown spec key(s) {unknown}; known: {sorted(known)}")
    return out


# the paper spec's keys and defaults (configs/paper.py); xlam / toolace / prepared: data paths, name: the run
PAPER_SPEC = {"model": "qwen2.5-7b", "mesh": "gpu8", "recipe": "rl", "reward": "binary", "data": "xlam+toolace"}
PAPER_SPEC_KEYS = (*PAPER_SPEC, *DEFAULT_DATA_PATHS, "name")


def apply_spec(c: Any, arg: str | None) -> Any:
    """``c`` set up as the paper run the spec ``arg`` names (keys :data:`PAPER_SPEC_KEYS`, defaults
    :data:`PAPER_SPEC`), named ``<model>-<recipe>-<reward>-<data>`` unless ``name=`` is given, with
    workdir ``runs/<name>``."""
    spec = {**PAPER_SPEC, **parse_spec(arg, PAPER_SPEC_KEYS)}
    apply_model(c, spec["model"])
    apply_mesh(c, spec["mesh"])
    apply_recipe(c, spec["recipe"])
    apply_reward(c, spec["reward"])
    apply_data(c, spec["data"], {k: spec[k] for k in DEFAULT_DATA_PATHS if k in spec})
    c.name = spec["name"] if "name" in spec else "-".join(spec[k] for k in ("model", "recipe", "reward", "data"))
    c.workdir = os.path.join("runs", c.name)
    return c
