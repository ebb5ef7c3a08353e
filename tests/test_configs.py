"""configs/: the paper base equals Table 6, every spec variant builds, and bad configs fail early
with one message naming the key (no model is loaded, nothing is compiled)."""
import importlib.util
import itertools
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config_module(name):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def paper():
    return load_config_module("paper")


@pytest.fixture(scope="module")
def presets():
    from tooln1.config import presets

    return presets


def test_paper_base_is_table_6(paper):
    c = paper.get_config()
    g = c.grpo
    assert (g.batch_size, g.group_size, g.temperature, g.kl_coef) == (1024, 5, 0.7, 1e-3)
    assert "entropy_coef" not in g  # the paper's 0 is the only value the loss supports: no key
    assert (g.epochs, g.num_mini_batches, g.max_response_tokens, g.clip_eps) == (7, 4, 8192, 0.2)
    assert c.data.max_prompt_tokens == 4096
    assert dict(g.optimizer) == dict(learning_rate=1e-6, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                                     max_grad_norm=1.0)
    assert g.loss_agg == "token-mean" and g.reward == "binary" and g.top_p == 1.0 and g.top_k == 0
    assert c.model.preset == "qwen2.5-7b" and c.mesh.fsdp == 8 and c.grpo.enabled and not c.sft.enabled


def test_every_variant_builds(paper, presets):
    from tooln1.models import PRESETS
    from tooln1.reward import KINDS

    assert set(presets.REWARDS) == set(KINDS)
    for model, mesh in itertools.product(presets.MODELS, presets.MESHES):
        c = paper.get_config(f"model={model},mesh={mesh}")
        assert c.model.preset in PRESETS or model == "tiny"
        assert c.mesh.preset == mesh
    for recipe, reward, data in itertools.product(presets.RECIPES, presets.REWARDS, presets.DATA):
        c = paper.get_config(f"recipe={recipe},reward={reward},data={data},xlam=x.json")
        sft, target, rl = presets.RECIPES[recipe]
        assert (c.sft.enabled, c.sft.target, c.grpo.enabled, c.grpo.reward) == (sft, target, rl, reward)
        assert c.data.sources
    c = paper.get_config("data=xlam+toolace,xlam=/d/x.json,toolace=/d/t.json")
    assert c.data.sources == "xlam:/d/x.json,toolace:/d/t.json"
    mesh = paper.get_config("mesh=tpu-v5e-64").mesh
    assert (mesh.data, mesh.fsdp, mesh.tensor, mesh.num_devices) == (1, 64, 1, 64)
    c = paper.get_config("model=qwen2.5-7b,mesh=tpu-v4-32-tp4")
    assert (c.mesh.fsdp, c.mesh.tensor, c.mesh.target, c.grpo.micro_batch_size) == (4, 4, "tpu-v4-32", 20)
    # decode slots: the defaults, and fewer where a model's KV pages need it (docs/scaling.md)
    c = paper.get_config("model=qwen2.5-7b")
    assert (c.grpo.rollout_slots, c.eval.rollout_slots) == (16, 32)
    c = paper.get_config("model=qwen2.5-14b,mesh=gpu8-h200")
    assert (c.grpo.rollout_slots, c.eval.rollout_slots) == (8, 16)


@pytest.mark.parametrize("spec, needle", [
    ("model=gpt-9", "model='gpt-9'"),
    ("mesh=tpu-v9", "mesh='tpu-v9'"),
    ("recipe=dpo", "recipe='dpo'"),
    ("reward=fuzzy", "reward='fuzzy'"),
    ("data=web", "data='web'"),
    ("colour=red", "colour"),
    ("model", "key=value"),
])
def test_bad_spec_names_the_key(paper, spec, needle):
    with pytest.raises(ValueError) as e:
        paper.get_config(spec)
    assert needle in str(e.value)


def test_quickstart_config_is_valid(tmp_path):
    """The shipped quickstart config, mesh included (fsdp=-1 takes conftest's 8 host devices)."""
    from tooln1.config import mesh_batch_shards, validate_config

    c = load_config_module("quickstart").get_config()
    assert c.model.tiny.enabled and c.sft.enabled and c.grpo.enabled and c.data.sources.startswith("synthetic-tiny")
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, -1, 1)
    validate_config(c)
    assert mesh_batch_shards(c) == 8


def test_smollm2_config_builds_each_recipe_and_names_a_bad_spec():
    smollm2 = load_config_module("smollm2")
    rl, rsr = smollm2.get_config("recipe=rl,seed=2"), smollm2.get_config("recipe=reason-sft-rl")
    assert (rl.sft.enabled, rl.grpo.enabled, rl.seed, rl.workdir) == (False, True, 2, "runs/smollm2/rl-seed2")
    assert rsr.sft.enabled and rsr.grpo.enabled and rsr.sft.target == "reason" and rsr.model.frozen_layers == 22
    lora = smollm2.get_config("recipe=reason-sft-rl-lora")
    assert lora.sft.enabled and lora.model.lora.rank == 16 and lora.model.frozen_layers == 0
    assert lora.sft.optimizer.learning_rate == 10 * rsr.sft.optimizer.learning_rate
    assert lora.grpo.optimizer.learning_rate == 2 * rsr.grpo.optimizer.learning_rate
    assert lora.workdir.endswith("reason-sft-rl-lora-seed0")
    for spec, needle in (("recipe=sft", "recipe='sft'"), ("lr=1", "unknown spec key(s) ['lr']")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            smollm2.get_config(spec)



def test_smollm2_multi_turn_config_trains_on_the_bfcl_training_split():
    from tooln1.config import validate_config

    c = load_config_module("smollm2_multi_turn").get_config()
    assert c.data.sources == "bfcl-multi-turn:train" and c.data.val_spec.startswith("bfcl-multi-turn:eval")
    assert c.grpo.enabled and not c.sft.enabled and c.grpo.max_turns > 1
    assert c.grpo.prompt_bucket >= c.data.max_prompt_tokens
    c.mesh.update(data=1, fsdp=1, tensor=1, num_devices=0)  # the one CPU device it runs on, not conftest's 8
    validate_config(c, check_paths=False)


def test_smollm2_lookup_config_is_the_multi_turn_lookup_task_per_seed():
    from tooln1.config import validate_config

    c = load_config_module("smollm2_lookup").get_config("seed=2")
    assert (c.seed, c.data.seed, c.data.sources, c.workdir) == (
        2, 2, "synthetic-lookup:2000:2:0.9", "runs/smollm2/lookup-seed2")
    assert c.sft.enabled and c.grpo.enabled and c.grpo.max_turns == 2 and c.model.frozen_layers == 22
    assert c.grpo.prompt_bucket >= c.data.max_prompt_tokens
    with pytest.raises(ValueError, match=re.escape("unknown spec key(s) ['recipe']")):
        load_config_module("smollm2_lookup").get_config("recipe=rl")
    c.mesh.update(data=1, fsdp=1, tensor=1, num_devices=0)
    validate_config(c, check_paths=False)


def _cfg(tmp_path, **over):
    """A valid tiny config on one device; `over` maps dotted keys to values."""
    c = load_config_module("quickstart").get_config()
    c.workdir = str(tmp_path)
    c.mesh.update(data=1, fsdp=1, tensor=1, num_devices=0)
    c.update_from_flattened_dict(over)  # dotted keys, e.g. {"grpo.steps": 2}
    return c


@pytest.mark.parametrize("over, needle", [
    ({"grpo.group_size": 1}, "config.grpo.group_size=1"),
    ({"model.attention": "flash3"}, "config.model.attention='flash3'"),
    ({"model.remat_policy": "some"}, "config.model.remat_policy='some'"),
    ({"grpo.rollout_slots": -1}, "config.grpo.rollout_slots=-1"),
    ({"eval.rollout_slots": -1}, "config.eval.rollout_slots=-1"),
    ({"grpo.reward": "fuzzy"}, "config.grpo.reward='fuzzy'"),
    ({"grpo.num_mini_batches": 3}, "config.grpo.num_mini_batches=3"),
    ({"grpo.micro_batch_size": 8}, "config.grpo.share_prompt packs whole groups: micro_batch_size=8"),
    ({"grpo.micro_batch_size": 5}, "config.grpo.micro_batch_size=5"),
    ({"mesh.fsdp": 8, "grpo.micro_batch_size": 4}, "data×fsdp size 8"),
    ({"mesh.fsdp": 8, "sft.batch_size": 12}, "config.sft"),
    ({"mesh.fsdp": 16}, "config.mesh"),
    ({"mesh.num_devices": 64}, "config.mesh.num_devices=64"),
    ({"model.path": "/nonexistent/ckpt", "model.tiny.enabled": False}, "config.model.path"),
    ({"data.sources": "xlam:/nonexistent/xlam.json"}, "config.data.sources: data path '/nonexistent/xlam.json'"),
    ({"data.sources": "csv:foo"}, "unknown data source kind 'csv'"),
    ({"data.mix_ratios": "toolace=2"}, "config.data.mix_ratios"),
    ({"grpo.loss_agg": "sum"}, "config.grpo.loss_agg='sum'"),
    ({"grpo.temperature": 0.0}, "config.grpo.temperature"),
    ({"sft.target": "cot"}, "config.sft.target='cot'"),
    ({"sft.enabled": False, "grpo.enabled": False}, "nothing to train"),
    ({"model.lora.rank": 8, "model.lora.dropout": 0.1}, "config.model.lora.dropout=0.1: only 0"),
    ({"model.lora.rank": 8, "model.lora.targets": "q,mlp"}, "config.model.lora.targets='q,mlp'"),
    ({"model.lora.rank": 8, "model.lora.quantize": "nf4"}, "config.model.lora.quantize='nf4'"),
    ({"model.lora.quantize": "int8"}, "needs config.model.lora.rank > 0"),
    ({"model.lora.rank": 8, "model.frozen_layers": 1}, "two ways to train part of the model"),
    ({"log.every": 0}, "config.log.every=0 must be >= 1"),
    ({"log.rollouts": -1}, "config.log.rollouts=-1 must be >= 0"),
])
def test_invalid_config_message(tmp_path, over, needle):
    from tooln1.config import ConfigError, validate_config

    with pytest.raises(ConfigError) as e:
        validate_config(_cfg(tmp_path, **over))
    assert needle in str(e.value), str(e.value)


def test_several_errors_in_one_message(tmp_path):
    from tooln1.config import ConfigError, validate_config

    with pytest.raises(ConfigError) as e:
        validate_config(_cfg(tmp_path, **{"grpo.group_size": 1, "grpo.reward": "x"}))
    assert "config.grpo.group_size" in str(e.value) and "config.grpo.reward" in str(e.value)


def test_cli_rejects_bad_config_before_compiling(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "tooln1.cli", "--config", str(ROOT / "configs" / "quickstart.py"),
         f"--config.workdir={tmp_path}", "--config.grpo.group_size=1", "--config.grpo.reward=nope"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config.grpo.group_size=1" in proc.stderr and "config.grpo.reward='nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "tiny_model").exists()  # nothing was built


@pytest.mark.parametrize("args, needle", [
    (["--config.grpo.lerning_rate=1"], "--config.grpo.lerning_rate: no such config key; did you mean "
                                       "grpo.optimizer.learning_rate"),
    (["--config.output_dir=x"], "--config.output_dir: no such config key; did you mean workdir?"),
])
def test_cli_names_the_closest_keys_of_a_misspelled_override(tmp_path, args, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "tooln1.cli", "--config", str(ROOT / "configs" / "quickstart.py"), *args],
        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300,
    )
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_cli_missing_config_file_and_uncreatable_workdir_are_one_line(tmp_path):
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "tooln1.cli", *a], capture_output=True, text=True, cwd=tmp_path,
        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    proc = run("--config", "configs/nope.py")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "tooln1-train: config file configs/nope.py does not exist (TOOLN1_DEBUG=1 for the traceback)"]
    (tmp_path / "file").write_text("")
    proc = run("--config", str(ROOT / "configs" / "quickstart.py"), f"--config.workdir={tmp_path}/file/run")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert f"config.workdir='{tmp_path}/file/run': cannot create" in proc.stderr


def test_invalid_config_leaves_no_workdir(tmp_path):
    from tooln1.config import ConfigError
    from tooln1.training.loop import prepare_workdir

    cfg = _cfg(tmp_path / "run", **{"grpo.group_size": 1})
    with pytest.raises(ConfigError):
        prepare_workdir(cfg)
    assert not (tmp_path / "run").exists()


def test_frozen_layers_beyond_the_checkpoints_depth_is_a_config_error(tmp_path):
    from tooln1.config import ConfigError
    from tooln1.training.context import build_context
    from tooln1.training.loop import prepare_workdir

    cfg = _cfg(tmp_path / "run", **{"model.frozen_layers": 5})  # the tiny model has 2 layers
    with pytest.raises(ConfigError, match=r"config.model does not fit .*frozen_layers=5: expected 0..num_layers=2"):
        build_context(cfg, prepare_workdir(cfg))


@pytest.mark.parametrize("entry", ["tooln1.cli:main(['tooln1-train', '--config', 'nope.py'])",
                                   "tooln1.eval.cli:main(['--compare', 'nope.json'])"])
def test_clis_silence_transformers_pytorch_warning(entry):
    """Without torch (the quickstart install) transformers warns that PyTorch was not found; our CLIs
    run on JAX and switch that advisory off before transformers loads."""
    module, call = entry.split(":")
    code = (f"import sys; sys.modules['torch'] = None; import {module} as m\n"
            f"try:\n    m.{call}\nexcept SystemExit:\n    pass\nimport transformers")
    # dropped: a CLI run in-process set it
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PyTorch was not found" not in proc.stderr
    plain = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; import transformers"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert "PyTorch was not found" in plain.stderr  # the warning this test is about


def test_schema_is_the_base_config_and_every_key_has_help():
    from tooln1.config import base_config, typed
    from tooln1.config.schema import Config, keys

    c = base_config()
    assert typed(c) == Config()
    listed = [k.name for k in keys()]
    assert len(listed) == len(set(listed)) and set(listed) == set(_leaf_keys(c.to_dict()))
    assert all(k.help and "\n" not in k.help for k in keys())
    assert c.sft.optimizer.learning_rate == 1e-5 and c.grpo.optimizer.learning_rate == 1e-6


def _leaf_keys(d, prefix=""):
    for k, v in d.items():
        yield from (_leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k])


def test_typed_names_unknown_missing_and_mistyped_keys():
    from tooln1.config import ConfigError, base_config, typed

    d = base_config().to_dict()
    d["grpo"]["entropy_coef"] = 0.0
    del d["eval"]["every"]
    d["sft"]["batch_size"] = "8"
    d["grpo"]["kl_coef"] = 0  # an int is a float
    with pytest.raises(ConfigError) as e:
        typed(d)
    msg = str(e.value)
    assert "config.grpo.entropy_coef: no such config key" in msg and "config.eval.every is missing" in msg
    assert "config.sft.batch_size='8': expected int" in msg and "kl_coef" not in msg


def test_removed_entropy_coef_override_names_no_key():
    from tooln1.config import ConfigError, check_override_keys

    with pytest.raises(ConfigError, match=r"--config.grpo.entropy_coef: no such config key"):
        check_override_keys(load_config_module("quickstart").get_config(), ["grpo.entropy_coef"])


def test_paper_spec_is_applied_over_the_schema(presets):
    from tooln1.config import apply_spec, base_config

    c = apply_spec(base_config(), "model=qwen2.5-3b,recipe=sft-rl,data=xlam,xlam=/d/x.json")
    assert (c.name, c.workdir) == ("qwen2.5-3b-sft-rl-binary-xlam", "runs/qwen2.5-3b-sft-rl-binary-xlam")
    assert (c.model.path, c.data.sources, c.sft.target) == ("checkpoints/Qwen2.5-3B-Instruct", "xlam:/d/x.json",
                                                           "no_reason")
    with pytest.raises(ValueError, match=re.escape("unknown spec key(s) ['size']")):
        presets.parse_spec("size=3", known=("seed",))


def test_docs_key_table_is_the_schema():
    """docs/training.md's key table is `key_table()`'s rendering (python -m tooln1.config.reference)."""
    from tooln1.config.reference import key_table

    doc = (ROOT / "docs" / "training.md").read_text()
    assert doc.count(key_table()) == 1
    assert doc.count("| key | default | meaning |") == 1  # no second, hand-written table


def test_runtime_objects_of_a_config():
    from tooln1.config.runtime import (
        grpo_loss,
        logprob_micro_batch,
        optimizer_config,
        prompt_buckets,
        rollout_sampling,
        sft_loss,
        validation_sampling,
    )
    from tooln1.training.updater import OptimizerConfig

    c = load_config_module("quickstart").get_config()
    assert optimizer_config(c.grpo.optimizer) == OptimizerConfig(**c.grpo.optimizer)
    assert optimizer_config(c.sft.optimizer).learning_rate == 5e-3
    loss = grpo_loss(c.grpo)
    assert (loss.temperature, loss.rows_per_prompt, loss.on_policy, loss.logprob_chunk_size) == (1.0, 16, False, 512)
    assert sft_loss(c.sft).loss_agg == "token-mean"
    assert logprob_micro_batch(c.grpo) == 64 and prompt_buckets(c) == (448,)
    rollout, val = rollout_sampling(c, [7, 8], 0), validation_sampling(c, [7], 0)
    assert (rollout.num_samples, rollout.max_new_tokens, rollout.temperature) == (16, 48, 1.0)
    assert (rollout.eos_ids, rollout.engine.num_slots, val.eos_ids) == ((7, 8), 0, (7,))
    assert (val.num_samples, val.temperature, val.prompt_buckets) == (1, 0.0, (448,))
    paper = load_config_module("paper").get_config()
    assert prompt_buckets(paper)[-1] == 8192 and rollout_sampling(paper, [0], 0).engine.num_slots == 16


@pytest.mark.parametrize("entry, flags", [
    ("tooln1.cli", ["--config FILE[:SPEC]", "--config.KEY=VALUE", "--config.grpo.batch_size=1024",
                    "--config.grpo.optimizer.learning_rate=1e-06", "--config.compile_cache_dir=\"\""]),
    ("tooln1.preflight.fit", ["--config FILE[:SPEC]", "--config.KEY=VALUE", "--json=\"\"", "--target=\"\"",
                              "--programs=\"\"", "--layers=0", "--hbm_gib=0.0"]),
    ("tooln1.checkpoints.hf_import", ["--dtype", "(default: float32)", "--max-shard-size", "(default: 5GB)"]),
])
def test_console_scripts_help_exits_0_and_lists_their_flags(entry, flags):
    proc = subprocess.run([sys.executable, "-m", entry, "--help"], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in flags:
        assert flag in proc.stdout, flag
    if entry == "tooln1.cli":  # every key, with its help
        from tooln1.config.schema import keys

        assert all(f"--config.{k.name}=" in proc.stdout for k in keys())
        assert "USAGE" not in proc.stdout and "absl" not in proc.stdout
