"""Tool-calling data: sources (xLAM, ToolACE, synthetic) → unified records → Tool-N1 prompts.

Typical use::

    from tooln1.data import load_records, render_prompt
    records = load_records("xlam:data/xlam.json")        # or "toolace:…", "synthetic:1000"
    text = render_prompt(records[0], tokenizer)
"""
from tooln1.data.mixing import add_irrelevance, mix, train_val_split
from tooln1.data.prompt import (
    DEFAULT_PREAMBLE,
    build_messages,
    filter_by_prompt_length,
    prompt_batch,
    render_prompt,
    system_prompt,
    tokenize_prompts,
)
from tooln1.data.records import read_records, validate_record, write_records
from tooln1.data.sources import (
    SourceStats,
    load_records,
    load_records_with_stats,
    load_source,
    toolace_records,
    xlam_records,
)
from tooln1.data.synthetic import generate_xlam_rows
from tooln1.data.toolace_calls import CallParseError, parse_calls

__all__ = [
    "DEFAULT_PREAMBLE", "CallParseError", "SourceStats", "add_irrelevance", "build_messages",
    "filter_by_prompt_length", "generate_xlam_rows", "load_records", "load_records_with_stats",
    "load_source", "mix", "parse_calls", "prompt_batch", "read_records", "render_prompt", "system_prompt",
    "tokenize_prompts", "toolace_records", "train_val_split", "validate_record", "write_records", "xlam_records",
]
