#!/usr/bin/env python
"""Train the tiny byte-level BPE tokenizer shipped in ``tooln1/assets/tiny_tokenizer``.

The tokenizer mirrors Qwen2.5-Instruct's *structure* (NFC normaliser, the Qwen2 split regex +
byte-level pre-tokenizer, byte-level decoder, BPE model, ``<|endoftext|>``/``<|im_start|>``/
``<|im_end|>`` special tokens and ``<tool_call>``/``</tool_call>`` ordinary added tokens, and the
exact Qwen2.5-Instruct chat template with tools support and the default system prompt) with a
~3k vocabulary, so tests and the quickstart exercise the real Hugging Face code paths without the
hub. The corpus is built deterministically from text embedded below (the docs/design.md §5 prompt template,
English prose, JSON and tool-call-like text), so re-running this script reproduces the asset byte for byte.

The asset is committed, so nothing needs this script to run: run it only to change the tiny tokenizer (its
corpus, vocabulary size or chat template), then commit the files it writes.

    python tools/train_tiny_tokenizer.py [--out tooln1/assets/tiny_tokenizer] [--vocab-size 3000]
"""
# ruff: noqa: E501 -- Qwen's chat template below is kept byte for byte, its long lines included
import argparse
import hashlib
import json
import os
import random

# Qwen2.5-Instruct's chat template, byte for byte (the tokenizer_config.json "chat_template" of
# Qwen/Qwen2.5-*-Instruct). Its sha256 is checked below so an accidental edit is caught.
QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
QWEN25_CHAT_TEMPLATE_SHA256 = "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "tooln1", "assets", "tiny_tokenizer")

# Qwen2's pre-tokenisation regex (transformers' Qwen2Tokenizer / Qwen's tokenizer.json).
QWEN2_SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                     r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# (content, special) in id order after the BPE vocabulary, as in Qwen2.5 (special tokens first,
# then the ordinary added tool-call tokens).
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
]

XLAM_PREAMBLE = (
    "You are an expert in composing functions. You are given a question and a set of possible "
    "functions. \nBased on the question, you will need to make one or more function/tool calls to "
    "achieve the purpose. \nIf none of the function can be used, point it out. If the given question "
    "lacks the parameters required by the function,\nalso point it out. You should only return the "
    "function call in tools call sections. Here is a list of functions in JSON format that you can "
    "invoke:\n")

TOOL_BLOCK_HEAD = "# Tool\n\nHere is a list of functions in JSON format that you can invoke:\n\n<tools>\n"
TOOL_BLOCK_TAIL = (
    "</tools>\n\nIn each action step, you MUST: \n1. Think about the reasoning process in the mind and "
    "enclosed your reasoning within <think> </think> XML tags.\n2. Then, provide a json object with "
    "function names and arguments within <tool_call></tool_call> XML tags. i.e., <tool_call>[{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}, {\"name\": <function-name2>, \"arguments\": "
    "<args-json-object2>}, ...]</tool_call>\n3. Make sure both the reasoning and the tool call steps are "
    "included together in one single reply.\nA complete reply example is: <think>To address the query, I "
    "need to send the email to Bob and then buy the banana through walmart. </think> <tool_call> "
    "[{\"name\": \"email\", \"arguments\": {\"receiver\": \"Bob\", \"content\": \"I will bug banana through "
    "walmart\"}}, {\"name\": \"walmart\", \"arguments\": {\"input\": \"banana\"}}]</tool_call>. Please make "
    "sure the type of the arguments is correct. \n")

PROSE = """\
The quick brown fox jumps over the lazy dog. A language model reads a prompt and writes a reply one
token at a time. When a user asks a question, the assistant should think about what is needed and
then answer clearly. If the question needs live data, such as the weather in a city, the price of a
stock, or the next flight from one airport to another, the assistant calls a tool and waits for the
result. Tools are described by a name, a short description and a list of parameters with their types.
A parameter may be a string, an integer, a number, a boolean, an array or an object, and some of them
are required while others are optional and have a default value. The model must choose the right
function, fill in every required argument with a value of the correct type, and return the call as
JSON. Reinforcement learning rewards the model only when the format is right and the call matches the
ground truth exactly. This is the main idea of the paper: rule-based rewards without reasoning traces.
Please find the nearest restaurant that serves vegetarian food and book a table for four people at
seven in the evening. Convert one hundred US dollars to euros and tell me the exchange rate. What is
the population of Paris, London, Berlin, Madrid, Rome, Tokyo, Beijing, New York and San Francisco?
Calculate the area of a circle with a radius of five meters. Send an email to Alice with the report.
Search for recent news about climate change, artificial intelligence, football and the stock market.
I would like to know the time in Sydney, the distance between two points, and the sum of a list.
"""

WORDS = ("get set find search list create update delete send book fetch calculate convert check "
         "weather city country date time price stock symbol user email message query limit page "
         "number amount currency from to location radius unit name id type value text language "
         "start end year month day hour minute artist song movie title genre rating review product "
         "order status account balance address phone flight hotel restaurant recipe ingredient "
         "team player score match league game temperature forecast news topic source category "
         "image url file size format width height color latitude longitude zip code region "
         "distance route mode speed average sum total count max min random string integer boolean "
         "array object float description required properties parameters default optional").split()
TYPES = ["string", "integer", "number", "boolean", "array", "object"]
SYLLABLES = ("al ber ca den el fa gor han is jo ka lin mar no pe qua ro san ta ul ver wil xa yo zen "
             "ston ford ton ville berg burg ham shire land port field wood mont dale").split()


def _proper_noun(rng):
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _tool(rng):
    name = "_".join(rng.sample(WORDS, rng.randint(1, 3)))
    params = {}
    for p in rng.sample(WORDS, rng.randint(1, 4)):
        params[p] = {"type": rng.choice(TYPES),
                     "description": "The " + " ".join(rng.sample(WORDS, rng.randint(2, 6))) + "."}
    return {"name": name, "description": " ".join(rng.sample(WORDS, rng.randint(4, 10))).capitalize() + ".",
            "parameters": {"type": "object", "properties": params,
                           "required": list(params)[: rng.randint(0, len(params))]}}


def _value(rng, typ):
    if typ == "integer":
        return rng.randint(-5, 100000)
    if typ == "number":
        return round(rng.uniform(-100, 1000), rng.randint(1, 4))
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "array":
        return [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]
    if typ == "object":
        return {rng.choice(WORDS): rng.choice(WORDS)}
    if rng.random() < 0.5:
        return " ".join(_proper_noun(rng) for _ in range(rng.randint(1, 2)))
    return " ".join(rng.sample(WORDS, rng.randint(1, 3))).title()


def build_corpus(n_examples=2000, seed=0):
    """A deterministic list of training texts."""
    rng = random.Random(seed)
    texts = [QWEN25_CHAT_TEMPLATE, XLAM_PREAMBLE, TOOL_BLOCK_HEAD, TOOL_BLOCK_TAIL, PROSE * 3,
             "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n" * 5]
    for _ in range(n_examples):
        tools = [_tool(rng) for _ in range(rng.randint(1, 3))]
        calls = []
        for t in rng.sample(tools, rng.randint(1, len(tools))):
            args = {k: _value(rng, v["type"]) for k, v in t["parameters"]["properties"].items()}
            calls.append({"name": t["name"], "arguments": args})
        question = rng.choice(PROSE.replace("\n", " ").split(". ")).strip()
        tool_lines = "\n".join(json.dumps({"type": "function", "function": t}) for t in tools)
        reply = ("<think>" + rng.choice(["To address the query, I need to call ", "The user wants ",
                                         "I should use "]) + calls[0]["name"] + ". </think>"
                 + " <tool_call>" + json.dumps(calls) + "</tool_call>")
        texts.append("<|im_start|>system\n" + XLAM_PREAMBLE + TOOL_BLOCK_HEAD + tool_lines + "\n"
                     + TOOL_BLOCK_TAIL + "<|im_end|>\n<|im_start|>user\n" + question
                     + "<|im_end|>\n<|im_start|>assistant\n" + reply + "<|im_end|>\n")
    return texts


def build_tokenizer(vocab_size=3000, seed=0):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # The special tokens must not be learnt as merges: strip them from the training text.
    corpus = build_corpus(seed=seed)
    for t, _ in ADDED_TOKENS:
        corpus = [c.replace(t, " ") for c in corpus]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(ADDED_TOKENS), min_frequency=1,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    for content, special in ADDED_TOKENS:
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False,
                           normalized=False, special=special)
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    return tok


def tokenizer_config(tok):
    decoder = {}
    for content, special in ADDED_TOKENS:
        decoder[str(tok.token_to_id(content))] = {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write(out_dir, vocab_size=3000, seed=0):
    assert hashlib.sha256(QWEN25_CHAT_TEMPLATE.encode()).hexdigest() == QWEN25_CHAT_TEMPLATE_SHA256
    os.makedirs(out_dir, exist_ok=True)
    tok = build_tokenizer(vocab_size=vocab_size, seed=seed)
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(tok), f, indent=2, ensure_ascii=False)
        f.write("\n")
    # vocab.json + merges.txt, as Qwen ships them (slow-tokenizer files).
    spec = json.loads(tok.to_str())
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(spec["model"]["vocab"], f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in spec["model"]["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    return tok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--vocab-size", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tok = write(args.out, args.vocab_size, args.seed)
    print(f"wrote {args.out} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
