"""The paper's runs as one config file with a spec argument.

    tooln1-train --config configs/paper.py                       # Table 6 defaults: Qwen2.5-7B, 8 GPUs, RL
    tooln1-train --config configs/paper.py:model=qwen2.5-3b,mesh=tpu-v4-32,recipe=sft-rl,reward=binary,data=xlam+toolace
    tooln1-train --config configs/paper.py:model=qwen2.5-7b --config.model.path=/ckpt/Qwen2.5-7B-Instruct

Spec keys (all optional): model (configs/common.py MODELS), mesh (MESHES), recipe (RECIPES: rl, sft,
reason-sft, sft-rl, reason-sft-rl), reward (binary, format_partial, format_name_partial,
binary_no_think), data (xlam, toolace, xlam+toolace, prepared), xlam= / toolace= / prepared= (paths
or hub ids for the data sources), name (run name; workdir runs/<name>).
"""
from tooln1.config import load_sibling
import os


def get_config(arg=None):
    common = load_sibling(__file__)
    c = common.base_config()
    spec = common.parse_spec(arg)
    known = {"model", "mesh", "recipe", "reward", "data", "xlam", "toolace", "prepared", "name"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"configs/paper.py: unknown spec key(s) {unknown}; known: {sorted(known)}")
    common.apply_model(c, spec.get("model", "qwen2.5-7b"))
    common.apply_mesh(c, spec.get("mesh", "gpu8"))
    common.apply_recipe(c, spec.get("recipe", "rl"))
    reward = spec.get("reward", "binary")
    if reward not in common.REWARDS:
        raise ValueError(f"config spec reward={reward!r}: unknown; known: {list(common.REWARDS)}")
    c.grpo.reward = reward
    paths = {k: spec[k] for k in ("xlam", "toolace", "prepared") if k in spec}
    common.apply_data(c, spec.get("data", "xlam+toolace"), paths)
    c.name = spec.get("name", "-".join(
        [spec.get("model", "qwen2.5-7b"), spec.get("recipe", "rl"), reward, spec.get("data", "xlam+toolace")]))
    c.workdir = os.path.join("runs", c.name)
    return c
