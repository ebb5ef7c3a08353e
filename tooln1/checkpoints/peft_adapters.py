"""A LoRA run's adapters as a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).

``peft.PeftModel.from_pretrained(base, directory)`` puts them back on the transformers model of the base
checkpoint the run started from and computes what our adapted model computes: PEFT's ``lora_A``
[r, in] and ``lora_B`` [out, r] are our A and B flattened to the HF projection's input and output
features, and its ``lora_alpha / r`` our scale.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from safetensors.numpy import save_file

from tooln1.models.lora import PROJECTIONS

_HF_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def adapter_tensors(model: Any) -> dict[str, np.ndarray]:
    """PEFT's tensor name -> float32 array for every adapter of ``model`` (gathered to the host)."""
    config, tensors = model.config, {}
    for target in config.lora_targets:
        owner, name, _ = PROJECTIONS[target]
        adapter = getattr(getattr(model.layers, owner), f"{name}_lora")
        a = np.asarray(jax.device_get(adapter.a[...]), np.float32)  # [L, *in, r]
        b = np.asarray(jax.device_get(adapter.b[...]), np.float32)  # [L, r, *out]
        for i in range(config.num_layers):
            prefix = f"base_model.model.model.layers.{i}.{_HF_MODULES[target]}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, a.shape[-1]).T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(b.shape[1], -1).T)
    return tensors


def save_adapters(model: Any, out_dir: str, base_model: str) -> None:
    """Write ``model``'s adapters to ``out_dir`` for PEFT, naming ``base_model`` (the HF directory the run
    loaded) as their base. Every process must call it; process 0 writes."""
    config = model.config
    if not config.lora_rank:
        raise ValueError("save_adapters: the model has no adapters (config.model.lora.rank is 0)")
    tensors = adapter_tensors(model)
    if jax.process_index() != 0:
        return
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": config.lora_rank, "lora_alpha": config.lora_alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(_HF_MODULES[t].split(".")[-1] for t in config.lora_targets),
        "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None,
    }
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)


__all__ = ["adapter_tensors", "save_adapters"]
