"""Model and training-state files: HF safetensors in and out, GGUF, orbax run state, tiny test checkpoints."""
