"""Writing an HF checkpoint directory (safetensors shards, config.json, tokenizer files) from a model.

Needs only the model's config and parameters, not its class: `CausalLM.save_pretrained` calls it.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from tooln1.checkpoints.hf_layout import SAFETENSORS_INDEX, SAFETENSORS_SINGLE, TOKENIZER_FILES, tensor_map


def _to_host(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def parse_size(size: int | str) -> int:
    """``"5GB"``, ``"2MiB"``, ``"300KB"`` or an int as bytes (the spellings of ``max_shard_size``)."""
    if isinstance(size, int):
        return size
    units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = size.strip().upper()
    for unit, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def save_pretrained(model: Any, out_dir: str, max_shard_size: int | str = "5GB") -> None:
    """Write ``model`` as an HF checkpoint that `transformers` loads.

    Tensors above ``max_shard_size`` in total are split into numbered shards with an index.
    Tokenizer and generation config files are copied from the source checkpoint when it had them.
    Only process 0 writes; every process must call this (it gathers sharded parameters).
    """
    config = model.config
    if getattr(config, "lora_rank", 0):
        raise ValueError("save_pretrained: the model has adapters; write tooln1.models.lora.merged(model) "
                         "(CausalLM.save_pretrained does)")
    table = tensor_map(config)
    variables = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors: dict[str, np.ndarray] = {}
    for name, (target, layer, _, to_hf) in table.items():
        value = variables[target][...] if layer is None else variables[target][...][layer]
        tensors[name] = np.ascontiguousarray(to_hf(_to_host(value)))
    if jax.process_index() != 0:
        return
    os.makedirs(out_dir, exist_ok=True)
    for stale in os.listdir(out_dir):  # never leave shards of an earlier export behind
        if stale.endswith(".safetensors") or stale == SAFETENSORS_INDEX:
            os.remove(os.path.join(out_dir, stale))

    limit = parse_size(max_shard_size)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, SAFETENSORS_SINGLE), metadata=metadata)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, filename), metadata=metadata)
            weight_map.update({name: filename for name in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
        with open(os.path.join(out_dir, SAFETENSORS_INDEX), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(out_dir):  # safetensors writes 0600; give the weights the mode open() gives files
        if name.endswith(".safetensors"):
            os.chmod(os.path.join(out_dir, name), 0o666 & ~umask)

    hf_config = json.loads(model.hf_config_json) if model.hf_config_json else config.to_hf()
    hf_config.update(architectures=[config.architecture], torch_dtype=config.param_dtype)
    hf_config.pop("dtype", None)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    source = model.source_dir
    copied = False
    if source and os.path.abspath(source) != os.path.abspath(out_dir):
        for filename in TOKENIZER_FILES + ("generation_config.json",):
            if os.path.isfile(os.path.join(source, filename)):
                shutil.copy2(os.path.join(source, filename), os.path.join(out_dir, filename))
                copied |= filename == "generation_config.json"
    if not copied and not os.path.isfile(os.path.join(out_dir, "generation_config.json")):
        generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                      if hf_config.get(k) is not None}
        with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(generation, f, indent=2)
