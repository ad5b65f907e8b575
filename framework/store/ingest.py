"""The per-process half of a build: parse, validate and tokenise a chunk of raw rows into an Arrow table.

Runs in the build's worker processes; each process loads the tokenizer once (`init_worker`).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pyarrow as pa

from framework.store.grouping import GroupedRow
from framework.store.normalize import Reject, normalise
from framework.store.schema import STORE_SCHEMA
from framework.store.sources import RawRow
from framework.store.tokenize import Encoder

RAW_PREVIEW_CHARS = 500
_STATE: Dict[str, Any] = {}


def init_worker(tokenizer_path: str, options: Mapping[str, Any]) -> None:
    """Load the tokenizer and remember the build options for every chunk this process will handle."""
    _STATE["encoder"] = Encoder(tokenizer_path, max_prompt_tokens=options.get("max_prompt_tokens"),
                                max_response_tokens=options.get("max_response_tokens"),
                                truncate=options.get("truncate", True))
    _STATE["kind"], _STATE["column_map"] = options.get("kind"), options.get("column_map")


def _preview(value: Any) -> str:
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace").rstrip("\n")
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text[:RAW_PREVIEW_CHARS]


def reject_record(row: RawRow, reject: Reject) -> Dict[str, Any]:
    """The rejects.jsonl entry for one row."""
    return {"file": row.file, "line": row.line, "field": reject.field, "reason": reject.reason,
            "detail": reject.detail, "raw": _preview(row.value)}


def _reject_records(row: RawRow, reject: Reject) -> List[Dict[str, Any]]:
    """One entry per input row: a grouped row's reject is listed at each of its lines."""
    if not isinstance(row.value, GroupedRow):
        return [reject_record(row, reject)]
    return [reject_record(RawRow(row.file, line, row.value.row), reject) for line in row.value.lines]


def _normalise(row: RawRow) -> Any:
    if isinstance(row.value, GroupedRow):  # columns were mapped while grouping
        return row.value.reject or normalise(row.value.row, kind=_STATE["kind"])
    return normalise(row.value, kind=_STATE["kind"], column_map=_STATE["column_map"])


def _to_table(examples: List[Dict[str, Any]], rows: List[RawRow]) -> pa.Table:
    columns: Dict[str, List[Any]] = {name: [] for name in STORE_SCHEMA.names}
    for example, raw in zip(examples, rows):
        example["source_file"], example["source_line"] = raw.file, raw.line
        for name, values in columns.items():
            values.append(example[name])
    return pa.table({name: pa.array(values, type=STORE_SCHEMA.field(name).type) for name, values in columns.items()},
                    schema=STORE_SCHEMA)


def process_chunk(rows: List[RawRow]) -> Tuple[Optional[pa.Table], List[Dict[str, Any]], int]:
    """(table of the valid rows in input order, reject records, input rows merged into another's table row);
    every input row lands in exactly one place."""
    rejects, valid, valid_rows = [], [], []
    for row in rows:
        result = _normalise(row)
        if isinstance(result, Reject):
            rejects += _reject_records(row, result)
        else:
            valid.append(result)
            valid_rows.append(row)
    examples, kept = [], []
    for row, encoded in zip(valid_rows, _STATE["encoder"].encode(valid) if valid else []):
        if isinstance(encoded, Reject):
            rejects += _reject_records(row, encoded)
        else:
            examples.append(encoded)
            kept.append(row)
    merged = sum(len(row.value.lines) - 1 for row in kept if isinstance(row.value, GroupedRow))
    return (_to_table(examples, kept) if examples else None), rejects, merged
