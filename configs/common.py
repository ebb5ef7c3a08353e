"""Shared building blocks of the tooln1 configs (imported by paper.py and quickstart.py by path).

Every key below is documented in docs/training.md; keep them stable (tools/ and experiments/ use them).
"""
from __future__ import annotations

import ml_collections

# --------------------------------------------------------------------------- model presets
# name -> (tooln1.models.PRESETS key, default HF checkpoint dir). A config points at an HF
# checkpoint directory (config.json + safetensors + tokenizer); the preset only documents the
# expected shape and is checked against the checkpoint's config.json at start-up.
MODELS = {
    "qwen2.5-0.5b": ("qwen2.5-0.5b", "checkpoints/Qwen2.5-0.5B-Instruct"),
    "qwen2.5-1.5b": ("qwen2.5-1.5b", "checkpoints/Qwen2.5-1.5B-Instruct"),
    "qwen2.5-3b": ("qwen2.5-3b", "checkpoints/Qwen2.5-3B-Instruct"),
    "qwen2.5-7b": ("qwen2.5-7b", "checkpoints/Qwen2.5-7B-Instruct"),
    "qwen2.5-14b": ("qwen2.5-14b", "checkpoints/Qwen2.5-14B-Instruct"),
    "llama-3-8b": ("llama-3-8b", "checkpoints/Meta-Llama-3-8B-Instruct"),
    "tiny": ("", ""),  # a random tiny checkpoint made on the fly (tests, quickstart)
}
# name -> (grpo.rollout_slots, eval.rollout_slots) per batch shard where the defaults' KV pages do not fit
# every preset (paper lengths, docs/scaling.md "The engine per batch shard"): Qwen2.5-14B's rollout on
# tpu-v5p-128 is 110 GiB a chip at 16 slots, 54 at 8; Llama-3-8B (8 KV heads, twice Qwen2.5-7B's) 40 GiB
# on 8 x H100 at 8
MODEL_SLOTS = {
    "qwen2.5-14b": (8, 16),
    "llama-3-8b": (8, 16),
}

# --------------------------------------------------------------------------- mesh presets
# name -> (mesh shape over (data, fsdp, tensor); -1 takes the remaining devices, expected devices or 0 = any,
#          the tooln1-fit target it is meant for: tooln1.preflight.targets.TARGETS, or "cpu:N")
MESHES = {
    "cpu": ({"data": 1, "fsdp": -1, "tensor": 1}, 0, "cpu:8"),
    "gpu1": ({"data": 1, "fsdp": 1, "tensor": 1}, 1, "h100-80gb:1"),
    "gpu8": ({"data": 1, "fsdp": 8, "tensor": 1}, 8, "h100-80gb:8"),
    "gpu8-h200": ({"data": 1, "fsdp": 8, "tensor": 1}, 8, "h200:8"),  # the same node with 141 GB H200s
    "tpu-v4-32": ({"data": 1, "fsdp": 16, "tensor": 1}, 16, "tpu-v4-32"),  # v4-32 = 16 chips; up to Qwen2.5-3B
    # Qwen2.5-7B on v4-32: 4-way tensor parallelism splits the decode weights and KV pools (docs/scaling.md)
    "tpu-v4-32-tp4": ({"data": 1, "fsdp": 4, "tensor": 4}, 16, "tpu-v4-32"),
    # 16 GiB chips, up to Qwen2.5-1.5B; fsdp over all 64 (data 4 x fsdp 16 left 1.5B's update 0.15 GiB over)
    "tpu-v5e-64": ({"data": 1, "fsdp": 64, "tensor": 1}, 64, "tpu-v5e-64"),
    "tpu-v5p-128": ({"data": 1, "fsdp": 64, "tensor": 1}, 64, "tpu-v5p-128"),  # v5p-128 = 64 chips
}

# --------------------------------------------------------------------------- paper recipes (Table 3)
# name -> (run SFT?, SFT target style, run GRPO?)
RECIPES = {
    "rl": (False, "reason", True),  # Tool-N1: GRPO straight from the instruct model
    "sft": (True, "no_reason", False),  # No-Reason SFT
    "reason-sft": (True, "reason", False),  # Reason-SFT
    "sft-rl": (True, "no_reason", True),  # No-Reason SFT -> RL
    "reason-sft-rl": (True, "reason", True),  # Reason-SFT -> RL
}

# Table 4 reward kinds (tooln1.reward.KINDS)
REWARDS = ("binary", "format_partial", "format_name_partial", "binary_no_think")

# Table 5 data mixes: name -> (comma-separated source specs, mixing ratios)
DATA = {
    "xlam": ("xlam:{xlam}", ""),
    "toolace": ("toolace:{toolace}", ""),
    "xlam+toolace": ("xlam:{xlam},toolace:{toolace}", ""),
    "prepared": ("prepared:{prepared}", ""),
}
DEFAULT_DATA_PATHS = {
    "xlam": "Salesforce/xlam-function-calling-60k",
    "toolace": "Team-ACE/ToolACE",
    "prepared": "data/prepared/train.parquet",
}


def optimizer(lr: float) -> ml_collections.ConfigDict:
    """AdamW + global-norm clipping (Table 6)."""
    return ml_collections.ConfigDict(dict(
        learning_rate=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, max_grad_norm=1.0,
    ))


def base_config() -> ml_collections.ConfigDict:
    """The paper's GRPO run (Table 6) on Qwen2.5-7B-Instruct, xLAM + ToolACE, 8 GPUs."""
    c = ml_collections.ConfigDict()
    c.name = "tooln1"
    c.workdir = "runs/tooln1"  # checkpoints, tensorboard, metrics.jsonl, hf_export/
    c.seed = 0
    c.compile_cache_dir = ""  # JAX persistent compilation cache ("" = off)

    c.model = ml_collections.ConfigDict(dict(
        preset="qwen2.5-7b",  # tooln1.models.PRESETS key, "" = don't check
        path="checkpoints/Qwen2.5-7B-Instruct",  # HF checkpoint dir; "" + tiny.enabled = make one
        tokenizer="",  # default: model.path
        dtype="float32",  # parameter dtype (DESIGN §8: fp32 params)
        compute_dtype="bfloat16",  # activations
        remat=True,
        remat_policy="full",  # what remat keeps: full (nothing) | dots (matmul outputs) | offload (them, on host)
        attention="auto",  # auto | dense | blockwise | splash | cudnn (tooln1.models.attention)
        scan_layers=True,  # False unrolls the layers (debugging; program size grows with depth)
        frozen_layers=0,  # >0: train only the blocks above the lowest N (embedding frozen too); 0 = full fine-tuning
        tiny=ml_collections.ConfigDict(dict(
            enabled=False, layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, seed=0,
        )),
    ))
    c.mesh = ml_collections.ConfigDict(dict(preset="gpu8", data=1, fsdp=8, tensor=1, num_devices=8,
                                            target="h100-80gb:8"))  # target: what tooln1-fit compiles for

    c.data = ml_collections.ConfigDict(dict(
        sources="xlam:Salesforce/xlam-function-calling-60k,toolace:Team-ACE/ToolACE",  # comma-separated specs
        mix_ratios="",  # e.g. "xlam=1.0,toolace=2.0"
        irrelevance=0.0,  # fraction of single-turn records copied as no-call examples
        val_spec="",  # separate held-out spec; "" = split val_size records off the training data
        val_size=256,
        max_prompt_tokens=4096,  # records whose rendered prompt is longer are dropped (paper: 4096)
        seed=0,  # shuffling / split seed
    ))

    c.sft = ml_collections.ConfigDict(dict(
        enabled=False,
        target="reason",  # "reason": <think>..</think><tool_call>..</tool_call>; "no_reason": <tool_call> only
        think_text="I need to call {names} with the values given in the question.",
        epochs=1,
        steps=0,  # > 0 overrides epochs
        batch_size=256,
        micro_batch_size=0,  # 0 = the whole batch
        max_seq_len=4096 + 512,  # longer examples are dropped
        loss_agg="token-mean",
        optimizer=optimizer(1e-5),
    ))

    c.grpo = ml_collections.ConfigDict(dict(
        enabled=True,
        batch_size=1024,  # prompts per rollout step
        group_size=5,  # G
        epochs=7,
        steps=0,  # > 0 overrides epochs
        num_mini_batches=4,
        micro_batch_size=40,  # rows per gradient-accumulation micro-batch (a group per GPU on gpu8; the mesh
        # presets set group_size x batch shards); 0 = whole mini-batch
        logprob_micro_batch_size=0,  # rows per old/ref log-prob forward; 0 = micro_batch_size
        temperature=0.7,
        top_p=1.0,
        top_k=0,
        max_response_tokens=8192,
        prompt_bucket=0,  # pad prompts to a multiple of this (0 = powers of two, the sampler's default)
        trim_responses=True,  # update over the tokens sampled: longest response's bucket, groups packed
        clip_eps=0.2,
        kl_coef=1e-3,
        entropy_coef=0.0,  # the paper uses 0; only 0 is supported
        loss_agg="token-mean",  # or seq-mean-token-mean, seq-mean-token-sum
        reward="binary",  # binary | format_partial | format_name_partial | binary_no_think
        reward_workers=0,  # > 0: score in worker processes
        ref_offload=False,  # keep the frozen reference params in host memory between uses
        # the rollout engine's decode slots per batch shard (data x fsdp), each with KV pages for P + R tokens;
        # 0 = its default (up to 64). 16 keeps Qwen2.5-7B's paper-length rollout at 36 GiB a GPU on 8 x H100
        # and 27 GiB a chip on v5p-128 (docs/scaling.md, "The engine per batch shard")
        rollout_slots=16,
        logprob_chunk_size=512,  # LM-head positions at a time (0 = all); bounds [n, chunk, V] logits
        # score each group's prompt once, packed with its G responses (GRPOLoss.group_size): same values,
        # P + G·R instead of G·(P + R) tokens per forward, and attention never more than unpacked (prefix
        # and own-causal parts merged); needs (logprob_)micro_batch_size % group_size == 0
        share_prompt=True,
        optimizer=optimizer(1e-6),
    ))

    c.eval = ml_collections.ConfigDict(dict(
        every=50,  # GRPO/SFT steps between validations; 0 = only before and after
        batch_size=64,  # prompts per greedy sampling call
        # the engine's decode slots per batch shard for validation, at most (0 = its default, up to 64): a
        # shard takes its share of the prompts rounded up (64 prompts on 8 x H100: 8 each, Qwen2.5-7B's
        # P 4,096 + R 1,024 validation at 27 GiB a GPU)
        rollout_slots=32,
        max_new_tokens=1024,
        at_start=True,
    ))
    c.checkpoint = ml_collections.ConfigDict(dict(
        every=25, keep=3, async_save=True, resume=True,
    ))
    c.log = ml_collections.ConfigDict(dict(
        every=1,  # steps between tensorboard writes
        tensorboard=True,
        progress=True,  # tqdm bar
        peak_tflops=0.0,  # per-device peak for MFU; 0 = from the device kind (CPU: measured matmul)
        data_ids=False,  # write the record ids of every step to data_ids.jsonl (tests)
    ))
    c.export = ml_collections.ConfigDict(dict(enabled=True, dir=""))  # "" = <workdir>/hf_export
    # kill_after_steps: stop abruptly after this many steps of this process, as a kill would (no
    # final checkpoint, no export); for resume tests.
    c.debug = ml_collections.ConfigDict(dict(kill_after_steps=0))
    return c


def parse_spec(arg: str | None) -> dict[str, str]:
    """``"model=qwen2.5-7b,mesh=gpu8"`` -> dict; unknown keys are an error."""
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"config spec part {part!r} must be key=value")
        out[key.strip()] = value.strip()
    return out


def apply_model(c: ml_collections.ConfigDict, name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"config spec model={name!r}: unknown; known: {sorted(MODELS)}")
    preset, path = MODELS[name]
    c.model.preset = preset
    c.model.path = path
    c.model.tiny.enabled = name == "tiny"
    if name in MODEL_SLOTS:
        c.grpo.rollout_slots, c.eval.rollout_slots = MODEL_SLOTS[name]
    c.name = f"{c.name}-{name}"


def apply_mesh(c: ml_collections.ConfigDict, name: str) -> None:
    if name not in MESHES:
        raise ValueError(f"config spec mesh={name!r}: unknown; known: {sorted(MESHES)}")
    shape, devices, target = MESHES[name]
    c.mesh.preset = name
    c.mesh.target = target
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape["data"], shape["fsdp"], shape["tensor"]
    c.mesh.num_devices = devices
    if devices:  # one whole group per device and micro-batch: what share_prompt packs into one row
        c.grpo.micro_batch_size = c.grpo.group_size * shape["data"] * shape["fsdp"]
    if name == "cpu":
        c.model.compute_dtype = "float32"


def apply_recipe(c: ml_collections.ConfigDict, name: str) -> None:
    if name not in RECIPES:
        raise ValueError(f"config spec recipe={name!r}: unknown; known: {sorted(RECIPES)}")
    sft, target, rl = RECIPES[name]
    c.sft.enabled = sft
    c.sft.target = target
    c.grpo.enabled = rl


def apply_data(c: ml_collections.ConfigDict, name: str, paths: dict[str, str]) -> None:
    if name not in DATA:
        raise ValueError(f"config spec data={name!r}: unknown; known: {sorted(DATA)}")
    sources, ratios = DATA[name]
    c.data.sources = sources.format(**{**DEFAULT_DATA_PATHS, **paths})
    c.data.mix_ratios = ratios
