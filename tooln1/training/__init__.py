"""The training loop: SFT and GRPO phases over a run context, the optimizer step and its batches."""
