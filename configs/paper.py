"""The paper's runs as one config file with a spec argument.

    tooln1-train --config configs/paper.py                       # Table 6 defaults: Qwen2.5-7B, 8 GPUs, RL
    tooln1-train --config configs/paper.py:model=qwen2.5-3b,mesh=tpu-v4-32,recipe=sft-rl,reward=binary,data=xlam+toolace
    tooln1-train --config configs/paper.py:model=qwen2.5-7b --config.model.path=/ckpt/Qwen2.5-7B-Instruct

Spec keys (all optional; tooln1.config.presets): model (MODELS), mesh (MESHES), recipe (RECIPES: rl,
sft, reason-sft, sft-rl, reason-sft-rl), reward (binary, format_partial, format_name_partial,
binary_no_think), data (xlam, toolace, xlam+toolace, prepared), xlam= / toolace= / prepared= (paths
or hub ids for the data sources), name (run name; workdir runs/<name>).
"""
from tooln1.config import apply_spec, base_config


def get_config(arg=None):
    return apply_spec(base_config(), arg)
