"""tooln1: Tool-N1 (GRPO for tool-calling LLMs) in JAX/Flax.

Public API (docs/design.md §3): `load_model`, `generate`, `CausalLM.save_pretrained`,
`tooln1.reward.compute_reward`, `tooln1.grpo.compute_advantages` / `policy_loss`.
Imports are lazy so host-only modules (reward, data) load without JAX.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": "tooln1.checkpoints.hf_import",
    "CheckpointError": "tooln1.checkpoints.hf_import",
    "CausalLM": "tooln1.models",
    "ModelConfig": "tooln1.models",
    "generate": "tooln1.rollout.sampling",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tooln1' has no attribute {name!r}")


__all__ = sorted(_LAZY)
