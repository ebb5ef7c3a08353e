"""Qwen2-family decoder models."""
from tooln1.models.config import PRESETS, ModelConfig, preset
from tooln1.models.decoder import CausalLM, count_params, default_positions

__all__ = ["CausalLM", "ModelConfig", "PRESETS", "count_params", "default_positions", "preset"]
