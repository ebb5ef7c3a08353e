"""SmolLM2-135M-Instruct, GRPO on BFCL v3 multi-turn training entries, on 2 CPU cores.

    tooln1-train --config configs/smollm2_multi_turn.py          # needs runs/smollm2/base (experiments/smollm2.py)

Rollouts play BFCL entries of the training split (``bfcl-multi-turn:train``; the held-out split is
what ``tooln1-eval --benchmarks bfcl-multi-turn`` scores) in `tooln1.environments.bfcl`, with the
paper's prompt and the environment's reward: 1 when every turn passes BFCL's state and response
checkers and every reply holds ``<think>…</think>``. Straight from the instruct model (``recipe=rl``).

Sizes fit a CPU: BFCL prompts are 3,600-8,500 SmolLM2 tokens (the function docs of one to four API
classes), so only prompts of at most 4,200 tokens train (the 20 one-class GorillaFileSystem
entries, 5 per category); 2 prompts x G 4 a step, replies of at most 128 tokens, 6 replies and 768
tokens of replies and observations per trajectory, tool results cut at 1,000 characters, the top 8
of 30 blocks trained. Validation: after GRPO only, greedy, on 2 held-out ``multi_turn_base`` entries.
Observed (experiments/README.md, "SmolLM2-135M-Instruct on BFCL v3 multi-turn"): no rollout earns a
reward, every group is all-zero, and held-out BFCL multi-turn stays 0/8 before and after.
"""
from tooln1.config import apply_mesh, apply_recipe, base_config

ROOT = "runs/smollm2"


def get_config(arg=None):
    c = base_config()
    apply_mesh(c, "cpu")
    apply_recipe(c, "rl")
    c.name = "smollm2-bfcl-multi-turn"
    c.workdir = f"{ROOT}/bfcl-multi-turn"
    c.model.preset = ""  # the shape comes from the checkpoint's config.json
    c.model.path = f"{ROOT}/base"
    c.model.remat = False
    c.model.frozen_layers = 22  # train the top 8 of 30 blocks, as configs/smollm2.py

    c.data.sources = "bfcl-multi-turn:train"
    c.data.val_spec = "bfcl-multi-turn:eval:multi_turn_base"
    c.data.val_size = 2
    c.data.max_prompt_tokens = 4200

    c.grpo.batch_size = 2
    c.grpo.group_size = 4
    c.grpo.steps = 2  # ~10-13 min a step on the loaded 2-core machine
    c.grpo.num_mini_batches = 1
    c.grpo.micro_batch_size = 4  # one group (shared prompt + G trajectories) per micro-batch
    c.grpo.logprob_micro_batch_size = 4
    c.grpo.temperature = 0.7  # as configs/smollm2.py: at 1.0 this model's samples are mostly broken
    c.grpo.max_response_tokens = 128
    c.grpo.max_turns = 6
    c.grpo.max_trajectory_tokens = 768
    c.grpo.tool_timeout_s = 5.0
    c.grpo.observation_chars = 1000
    c.grpo.prompt_bucket = 4224  # one compiled prompt shape
    c.grpo.rollout_slots = 0
    c.grpo.trim_responses = False  # one compiled update shape
    c.grpo.optimizer.learning_rate = 5e-5

    c.eval.at_start = False  # tooln1-eval scores the base model on the held-out split
    c.eval.every = 0
    c.eval.batch_size = 2
    c.eval.rollout_slots = 0
    c.eval.max_new_tokens = 128
    c.checkpoint.every = 2
    c.checkpoint.keep = 1
    c.compile_cache_dir = "../jax_cache"  # relative to the workdir: runs/smollm2/jax_cache, shared
    return c
