"""The tiny tokenizer asset and tiny checkpoints look like Qwen2.5-Instruct to transformers."""
import json
import os

import numpy as np
import pytest

from tooln1.checkpoints.tiny import make_tiny_checkpoint, special_token_ids, tiny_tokenizer_path

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_path())


def test_tokenizer_is_qwen2_fast(tok):
    assert type(tok).__name__ in ("Qwen2Tokenizer", "Qwen2TokenizerFast")
    assert tok.is_fast
    assert 2000 <= len(tok) <= 4000
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("text", [
    "Hello world!  Two spaces, tabs\tand\nnew lines.",
    '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]</tool_call>',
    "<think>I should call search.</think> unicode: café, 日本語, emoji 🙂",
])
def test_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_special_tokens_are_single_ids(tok):
    ids = special_token_ids()
    for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]:
        enc = tok.encode(t, add_special_tokens=False)
        assert enc == [ids[t]], (t, enc)
        assert tok.convert_ids_to_tokens(enc) == [t]
    # Qwen: <tool_call> is an ordinary added token (kept by skip_special_tokens), <|im_end|> special.
    s = tok.decode([ids["<tool_call>"], ids["<|im_end|>"]], skip_special_tokens=True)
    assert s == "<tool_call>"
    assert tok.eos_token_id == ids["<|im_end|>"] and tok.pad_token_id == ids["<|endoftext|>"]


def test_chat_template_is_qwen25(tok):
    msgs = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Hi there"}]
    out = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out == ("<|im_start|>system\nYou are a test.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                   "<|im_start|>assistant\n")
    # Default system prompt when none is given.
    out = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert out.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                          "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    # tools branch + tool responses, as Qwen2.5 renders them.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    out = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}],
                                  tools=tools, tokenize=False, add_generation_prompt=False)
    assert "\n\n# Tools\n\nYou may call one or more functions" in out
    assert '<tools>\n{"type": "function", "function": {"name": "f", "parameters": {}}}\n</tools>' in out
    assert out.endswith("<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n")
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids[0] == special_token_ids()["<|im_start|>"]


def test_checkpoint_loads_in_transformers(tmp_path):
    p = make_tiny_checkpoint(str(tmp_path / "q"), nonzero_biases=True, seed=1)
    files = set(os.listdir(p))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= files
    gen = json.load(open(os.path.join(p, "generation_config.json")))
    ids = special_token_ids()
    assert gen["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert gen["pad_token_id"] == ids["<|endoftext|>"]
    m = transformers.AutoModelForCausalLM.from_pretrained(p)
    assert type(m).__name__ == "Qwen2ForCausalLM" and m.config.tie_word_embeddings
    assert float(m.model.layers[0].self_attn.q_proj.bias.detach().abs().sum()) > 0
    t = transformers.AutoTokenizer.from_pretrained(p)
    x = t(["hello world"], return_tensors="pt")
    with torch.no_grad():
        logits = m(**x).logits
    assert logits.shape == (1, x["input_ids"].shape[1], len(t))
    # Same seed -> same weights.
    p2 = make_tiny_checkpoint(str(tmp_path / "q2"), nonzero_biases=True, seed=1)
    m2 = transformers.AutoModelForCausalLM.from_pretrained(p2)
    for (n, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=n)


def test_sharded_llama_checkpoint(tmp_path):
    p = make_tiny_checkpoint(str(tmp_path / "l"), arch="llama", shard_size="100KB")
    index = json.load(open(os.path.join(p, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1
    m = transformers.AutoModelForCausalLM.from_pretrained(p)
    assert type(m).__name__ == "LlamaForCausalLM" and not m.config.tie_word_embeddings
    assert m.model.layers[0].self_attn.q_proj.bias is None
