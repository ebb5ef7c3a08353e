"""Quickstart: tiny random Qwen2 + synthetic tool-calling data on 2 CPU cores, a few minutes.

    tooln1-train --config configs/quickstart.py

A short SFT warm-up teaches the tiny model the paper's reply format
(<think>..</think><tool_call>[..]</tool_call><|im_end|>), then GRPO with the binary reward raises
the greedy validation reward, then the model is exported in HF format to <workdir>/hf_export.
The validation reward before and after GRPO is printed at the end (and is in metrics.jsonl).
"""
from tooln1.config import apply_mesh, apply_model, base_config


def get_config(arg=None):
    c = base_config()
    c.name = "quickstart"
    c.workdir = "runs/quickstart"
    apply_model(c, "tiny")
    apply_mesh(c, "cpu")
    c.model.remat = False
    c.model.tiny.intermediate = 192

    # synthetic-tiny: three one-argument tools, one offered per query, values from closed sets of four
    # (see tooln1/data/synthetic.py); the paper's prompt template and binary reward are unchanged.
    c.data.sources = "synthetic-tiny:2000:0"
    c.data.val_size = 128
    c.data.max_prompt_tokens = 448  # prompts are 388-394 tokens with the tiny tokenizer
    c.grpo.prompt_bucket = 448  # every prompt padded to 448: one compiled shape

    c.sft.enabled = True
    c.sft.think_text = "call {names}"
    c.sft.steps = 100  # a partial warm-up: format learned, values copied only partly (docs/training.md)
    c.sft.batch_size = 8
    c.sft.max_seq_len = 512
    c.sft.optimizer.learning_rate = 5e-3
    c.sft.optimizer.weight_decay = 0.0

    c.grpo.batch_size = 8
    c.grpo.group_size = 16
    c.grpo.steps = 50
    c.grpo.num_mini_batches = 2
    c.grpo.micro_batch_size = 0  # whole mini-batch
    c.grpo.temperature = 1.0
    c.grpo.max_response_tokens = 48
    c.grpo.rollout_slots = 0  # the engine's default: all 128 samples' pages are tiny here
    c.grpo.trim_responses = False  # one compiled update shape
    c.grpo.optimizer.learning_rate = 5e-4
    c.grpo.optimizer.weight_decay = 0.0

    c.eval.every = 10
    c.eval.rollout_slots = 0  # all 64 at once: tiny pages
    c.eval.max_new_tokens = 48
    c.checkpoint.every = 10
    c.checkpoint.keep = 2
    c.compile_cache_dir = "jax_cache"
    return c
