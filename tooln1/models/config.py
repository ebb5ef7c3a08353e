"""Hyper-parameters of a Qwen2-family decoder, read from an HF config.json or a named preset."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "LlamaForCausalLM")
_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("full", "dots", "offload")
ATTENTION_IMPLEMENTATIONS = ("auto", "dense", "blockwise", "splash", "cudnn")  # tooln1.models.attention
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # the projections of a block (tooln1.models.lora)
BASE_QUANTIZATIONS = ("none", "int8", "int4")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs; hashable so it can be static in jit."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    qkv_bias: bool = True  # Qwen2 has q/k/v biases; Llama-3 has none.
    max_position_embeddings: int = 32768
    # llama3-style RoPE frequency scaling as (factor, low_freq_factor, high_freq_factor, original_max).
    rope_llama3_scaling: tuple[float, float, float, int] | None = None
    architecture: str = "Qwen2ForCausalLM"
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations and the KV cache
    remat: bool = False  # recompute each block in the backward pass
    remat_policy: str = "full"  # what remat keeps: "full" nothing, "dots" matmul outputs, "offload" them on host
    scan_layers: bool = True  # jax.lax.scan over the stacked layers; False unrolls them (debugging)
    attention: str = "auto"  # tooln1.models.attention implementation
    attention_block_size: int = 512  # query/key block of the blockwise and splash paths
    # Partial fine-tuning: the embedding (with a tied head) and the lowest N blocks get no gradient,
    # so the backward pass stops above them and the Updater leaves them as they are.
    frozen_layers: int = 0
    # LoRA (`tooln1.models.lora`): rank > 0 adds adapters to the ``lora_targets`` projections of every
    # block, and only they are trained; the base kernels may be held quantized (int8, int4)
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
    base_quantization: str = "none"

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {_DTYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"ModelConfig.attention={self.attention!r}; expected one of {ATTENTION_IMPLEMENTATIONS}")
        if not 0 <= self.frozen_layers <= self.num_layers:
            raise ValueError(
                f"ModelConfig.frozen_layers={self.frozen_layers}: expected 0..num_layers={self.num_layers}")
        if self.lora_rank < 0:
            raise ValueError(f"ModelConfig.lora_rank={self.lora_rank} must be >= 0 (0 = no adapters)")
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown or not self.lora_targets:
            raise ValueError(f"ModelConfig.lora_targets={self.lora_targets!r}: expected a non-empty subset of "
                             f"{LORA_TARGETS}")
        if self.base_quantization not in BASE_QUANTIZATIONS:
            raise ValueError(f"ModelConfig.base_quantization={self.base_quantization!r}; expected one of "
                             f"{BASE_QUANTIZATIONS}")
        if self.base_quantization != "none" and not self.lora_rank:
            raise ValueError("ModelConfig.base_quantization needs lora_rank > 0: quantized base weights are frozen")
        if self.lora_rank and self.frozen_layers:
            raise ValueError("ModelConfig: lora_rank and frozen_layers are two ways to train part of the model; "
                             "choose one")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
        """Build from the dict of an HF config.json (transformers 4.x or 5.x layout)."""
        archs = hf.get("architectures") or [_ARCH_BY_MODEL_TYPE.get(hf.get("model_type"), "?")]
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"config.json: unsupported architectures entry {arch!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        if hf.get("use_sliding_window"):
            raise ValueError("config.json: use_sliding_window=true is not supported (Qwen2.5 checkpoints set it false)")
        rope = dict(hf.get("rope_parameters") or {})
        scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        llama3 = None
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind != "llama3":
                raise ValueError(f"config.json: rope scaling type {kind!r} is not supported (only 'llama3')")
            llama3 = (
                float(scaling["factor"]),
                float(scaling["low_freq_factor"]),
                float(scaling["high_freq_factor"]),
                int(scaling["original_max_position_embeddings"]),
            )
        heads = hf["num_attention_heads"]
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=True if arch == "Qwen2ForCausalLM" else bool(hf.get("attention_bias", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            rope_llama3_scaling=llama3,
            architecture=arch,
        )
        if arch == "LlamaForCausalLM" and hf.get("mlp_bias"):
            raise ValueError("config.json: mlp_bias=true is not supported")
        fields.update(overrides)
        return cls(**fields)

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict for this model, written through transformers' own config class."""
        import transformers

        common = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            architectures=[self.architecture],
        )
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_llama3_scaling:
            factor, low, high, original = self.rope_llama3_scaling
            rope = dict(rope_type="llama3", rope_theta=self.rope_theta, factor=factor, low_freq_factor=low,
                        high_freq_factor=high, original_max_position_embeddings=original)
        if self.architecture == "Qwen2ForCausalLM":
            if not self.qkv_bias:
                raise ValueError("Qwen2ForCausalLM always has q/k/v biases; use LlamaForCausalLM for qkv_bias=False")
            cfg = transformers.Qwen2Config(**common)
        else:
            cfg = transformers.LlamaConfig(attention_bias=self.qkv_bias, mlp_bias=False, **common)
        _set_rope(cfg, rope)
        out = cfg.to_dict()
        out["torch_dtype"] = self.param_dtype
        return out


def _set_rope(cfg: Any, rope: dict[str, Any]) -> None:
    """Set RoPE fields on a transformers config of either major version."""
    if hasattr(cfg, "rope_parameters"):
        cfg.rope_parameters = rope
    else:  # transformers 4.x
        cfg.rope_theta = rope["rope_theta"]
        cfg.rope_scaling = None if rope["rope_type"] == "default" else rope


_ARCH_BY_MODEL_TYPE = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}

# DESIGN §4. Llama-3-8B: same block without q/k/v bias, theta 5e5, untied.
PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-0.5b": ModelConfig(151936, 896, 4864, 24, 14, 2, 64, tie_word_embeddings=True),
    "qwen2.5-1.5b": ModelConfig(151936, 1536, 8960, 28, 12, 2, 128, tie_word_embeddings=True),
    "qwen2.5-3b": ModelConfig(151936, 2048, 11008, 36, 16, 2, 128, tie_word_embeddings=True),
    "qwen2.5-7b": ModelConfig(152064, 3584, 18944, 28, 28, 4, 128, tie_word_embeddings=False),
    "qwen2.5-14b": ModelConfig(152064, 5120, 13824, 48, 40, 8, 128, tie_word_embeddings=False),
    "llama-3-8b": ModelConfig(
        128256, 4096, 14336, 32, 32, 8, 128, rope_theta=5e5, rms_norm_eps=1e-5, tie_word_embeddings=False,
        qkv_bias=False, max_position_embeddings=8192, architecture="LlamaForCausalLM",
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, e.g. ``preset("qwen2.5-7b", dtype="bfloat16")``."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
