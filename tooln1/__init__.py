"""tooln1: Tool-N1 (GRPO for tool-calling LLMs) in JAX/Flax.

Public API (DESIGN §3): `load_model`, `generate`, `CausalLM.save_pretrained`,
`tooln1.reward.compute_reward`, `tooln1.grpo.compute_advantages` / `policy_loss`.
"""
from tooln1.hf_io import CheckpointError, load_model
from tooln1.models import CausalLM, ModelConfig

__version__ = "0.1.0"


def generate(model, tokenizer, prompts, n=1, max_new_tokens=64, temperature=0.0, top_p=1.0, top_k=0, seed=0):
    """Sample ``n`` completions per templated prompt; see `tooln1.sampling.generate`."""
    from tooln1.sampling import generate as _generate

    return _generate(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                     top_p=top_p, top_k=top_k, seed=seed)


__all__ = ["CausalLM", "CheckpointError", "ModelConfig", "generate", "load_model"]
