"""The unified example record and its on-disk form.

A record is ``{id, source, system, tools, conversation: [{role, content}], answer: [{name,
arguments}]}`` (docs/design.md §6). On disk (parquet or JSONL written by ``tools/prepare_data.py``) the
nested fields ``tools``, ``conversation`` and ``answer`` are JSON strings: tool schemas and
argument values differ from row to row, which Arrow cannot hold in one typed column. A multi-turn
record's further fields (``env`` and what its environment reads, e.g. ``replay``) travel together as
the JSON column ``environment``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

FIELDS = ("id", "source", "system", "tools", "conversation", "answer")
JSON_FIELDS = ("tools", "conversation", "answer")
ENVIRONMENT_COLUMN = "environment"
ROLES = ("user", "assistant", "tool")


def make_record(id: str, source: str, system: str, tools: list, conversation: list, answer: list) -> dict:
    """Build a record (the one place that fixes the field order)."""
    return {"id": id, "source": source, "system": system, "tools": tools,
            "conversation": conversation, "answer": answer}


def validate_record(record: Any, where: str = "record") -> dict:
    """Check the schema; raises ValueError naming the offending field. Returns the record."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a dict, got {type(record).__name__}")
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    where = f"{where} (id={record['id']!r})"
    if not isinstance(record["system"], str):
        raise ValueError(f"{where}: field 'system' must be a string")
    if not isinstance(record["tools"], list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in record["tools"]):
        raise ValueError(f"{where}: field 'tools' must be a list of dicts with a string 'name'")
    conv = record["conversation"]
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{where}: field 'conversation' must be a non-empty list")
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise ValueError(f"{where}: conversation[{i}] must be {{role in {ROLES}, content: str}}")
    if not isinstance(record["answer"], list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), dict)
            for c in record["answer"]):
        raise ValueError(f"{where}: field 'answer' must be a list of {{name: str, arguments: dict}}")
    return record


def to_row(record: dict) -> dict:
    """Record → flat row with the nested fields JSON-encoded."""
    row = {k: record[k] for k in FIELDS}
    for k in JSON_FIELDS:
        row[k] = json.dumps(record[k], ensure_ascii=False)
    environment = {k: v for k, v in record.items() if k not in FIELDS}
    if environment:
        row[ENVIRONMENT_COLUMN] = json.dumps(environment, ensure_ascii=False)
    return row


def from_row(row: dict, where: str = "row") -> dict:
    """Flat row → validated record (inverse of ``to_row``; other columns such as prompt dropped)."""
    missing = [k for k in FIELDS if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    record = {k: row[k] for k in FIELDS}
    for k in JSON_FIELDS:
        if isinstance(record[k], str):
            try:
                record[k] = json.loads(record[k])
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: field {k!r} is not valid JSON ({e})") from None
    if row.get(ENVIRONMENT_COLUMN):
        try:
            record.update(json.loads(row[ENVIRONMENT_COLUMN]))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: column {ENVIRONMENT_COLUMN!r} is not valid JSON ({e})") from None
    return validate_record(record, where)


def write_records(records: Sequence[dict], path: str, extra_columns: dict[str, Sequence] | None = None) -> None:
    """Write records to ``.parquet`` or ``.jsonl`` (chosen by the extension)."""
    rows = [to_row(r) for r in records]
    for name, values in (extra_columns or {}).items():
        for row, v in zip(rows, values):
            row[name] = v
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        environment = [ENVIRONMENT_COLUMN] if any(ENVIRONMENT_COLUMN in row for row in rows) else []
        columns = list(FIELDS) + environment + [c for c in (extra_columns or {}) if c not in FIELDS]
        table = pa.table({c: [row.get(c) for row in rows] for c in columns})
        pq.write_table(table, path)
    else:
        raise ValueError(f"{path}: output must end in .parquet or .jsonl")


def read_records(path: str) -> list[dict]:
    """Read a file written by ``write_records`` back into validated records."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"prepared data file not found: {path}")
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            rows: Iterable[dict] = [json.loads(line) for line in f if line.strip()]
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"{path}: prepared data must end in .parquet or .jsonl")
    return [from_row(row, f"{path}: row {i}") for i, row in enumerate(rows)]
