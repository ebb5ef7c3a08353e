"""GGUF (llama.cpp) checkpoints in: one file -> HF config, HF-named float32 tensors, tokenizer.

A GGUF file holds the config as metadata under llama.cpp's key names, the tensors under llama.cpp's
names (``blk.N.attn_q.weight``), possibly quantised (Q4_1, Q8_0, ...), and the tokenizer's vocabulary,
merges and chat template. This module turns all three into what a Hugging Face checkpoint directory
holds, so `tooln1.checkpoints.hf_import` places the tensors exactly as it does for safetensors: tensors are read from
the memory-mapped file and dequantised one at a time (the `gguf` package's ``quants.dequantize``),
so host memory peaks near one float32 tensor. No torch is needed.

llama.cpp's converter permutes the rows of the Llama q/k projections (its RoPE rotates adjacent
pairs, HF's rotates halves); reading undoes that, as transformers' own GGUF loader does.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterator

import numpy as np

from tooln1.checkpoints.hf_layout import CheckpointError

# llama.cpp architecture -> (HF class, HF model_type, q/k rows permuted for llama.cpp's RoPE)
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    """HF tensor name for a llama.cpp one; names without a mapping come back unchanged (so they surface
    as unexpected tensors, naming what the file holds)."""
    base, dot, suffix = gguf_name.rpartition(".")
    if not dot:
        return gguf_name
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    return gguf_name


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: per head, rows interleaved (x0, y0, x1, y1, ...) back to HF's
    halves (x0, x1, ..., y0, y1, ...). Works for weights [n*hd, d] and biases [n*hd]."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -- reading --------------------------------------------------------------------------------
def _open(path: str):
    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file not found: {path}")
    stat = os.stat(path)
    return _reader(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _reader(path: str, mtime_ns: int, size: int):
    """The memory-mapped reader, kept for the next call: parsing the metadata of a 49k-token
    vocabulary costs seconds, and converting a file reads it for the weights and for the tokenizer."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def _metadata(reader, path: str) -> dict[str, Any]:
    """Metadata key -> Python value; the (large) vocabulary arrays are read only by the tokenizer."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                              "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        try:
            out[key] = field.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: metadata field {key} is unreadable ({e})") from None
    return out


def hf_config(reader, path: str) -> dict[str, Any]:
    """The HF config.json dict a GGUF file's metadata describes (through transformers' config class)."""
    import transformers

    meta = _metadata(reader, path)
    arch = meta.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise CheckpointError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(_ARCHITECTURES)}"
        )
    hf_class, model_type, _ = _ARCHITECTURES[arch]

    def key(name, default=None):
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata has no {arch}.{name}")
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = meta.get(f"{arch}.rope.scaling.factor", 1.0)
    if scaling not in ("none", "linear") or (scaling == "linear" and factor != 1.0):
        raise CheckpointError(f"{path}: GGUF rope scaling {scaling!r} is not supported")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise CheckpointError(f"{path}: GGUF tensor rope_freqs.weight (llama3 RoPE scaling) is not supported")
    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rotary = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise CheckpointError(f"{path}: partial RoPE ({arch}.rope.dimension_count={rotary}, head_dim {head_dim}) "
                              "is not supported")
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None and "tokenizer.ggml.tokens" in reader.fields:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)  # llama.cpp omits it when it is the vocabulary's size
    if vocab is None:
        raise CheckpointError(f"{path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    fields = dict(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=int(key("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(key("context_length")),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    if model_type == "llama":
        fields["attention_bias"] = "blk.0.attn_q.bias" in names
    config = transformers.AutoConfig.for_model(model_type, **fields).to_dict()
    config["architectures"] = [hf_class]
    return config


def _dequantize(tensor) -> np.ndarray:
    import gguf

    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # ggml lists the fastest dimension first
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)


def read_source(path: str) -> tuple[dict[str, Any], list[str], Callable[[list[str]], Iterator[tuple[str, np.ndarray]]]]:
    """``(hf_config, HF tensor names, iterate)`` for a GGUF file, the source `hf_import.load_model` places.

    ``iterate(names)`` yields ``(HF name, float32 array in HF layout)`` one tensor at a time.
    """
    reader = _open(path)
    config = hf_config(reader, path)
    permuted = _ARCHITECTURES[reader.fields["general.architecture"].contents()][2]
    tensors = {hf_name(t.name): t for t in reader.tensors}
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}

    def iterate(names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        for name in names:
            tensor = tensors[name]
            try:
                value = _dequantize(tensor)
            except (ValueError, NotImplementedError) as e:
                raise CheckpointError(f"{path}: tensor {tensor.name} ({tensor.tensor_type.name}) "
                                      f"cannot be dequantised ({e})") from None
            proj = name.split(".")[-2]
            if permuted and proj in heads:
                value = unpermute_rope(value, heads[proj])
            yield name, value

    return config, list(tensors), iterate


# -- tokenizer --------------------------------------------------------------------------------
def load_tokenizer(path: str):
    """The tokenizer (with chat template) a GGUF file's metadata describes, as a transformers fast
    tokenizer -- the one ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` builds, without torch."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    reader = _open(path)
    fields = reader.fields
    groups = {}
    for group, renames in GGUF_TOKENIZER_MAPPING.items():
        groups[group] = {name: fields[f"tokenizer.{key}"].contents() for key, name in renames.items()
                         if f"tokenizer.{key}" in fields}
    tokenizer_dict, tokenizer_config = groups["tokenizer"], groups["tokenizer_config"]
    if "tokens" not in tokenizer_dict:
        raise CheckpointError(f"{path}: GGUF metadata has no tokenizer.ggml.tokens (no tokenizer in the file)")
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece files
    tokens = tokenizer_dict["tokens"]
    for special in ("bos", "eos", "unk", "pad"):
        token_id = tokenizer_dict.get(f"{special}_token_id")
        tokenizer_config[f"{special}_token"] = tokens[token_id] if token_id is not None else None
    try:
        backend, extra = convert_gguf_tokenizer(fields["general.architecture"].contents(), tokenizer_dict)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
