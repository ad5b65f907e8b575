"""Synthetic stores of any size for load tests and benchmarks: random token ids, no tokenizer, seconds to write."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from framework.store.layout import write_version
from framework.store.schema import STORE_SCHEMA
from framework.store.version import StoreVersion


def _ids(rng: np.random.Generator, count: int, length: int, vocab: int) -> pa.Array:
    values = pa.array(rng.integers(0, vocab, count * length, dtype=np.int32))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, count * length + 1, length, dtype=np.int32)), values)


def synthetic_shard(rng: np.random.Generator, start: int, rows: int, *, prompt_tokens: int,
                    response_tokens: int, vocab: int = 1000) -> pa.Table:
    """`rows` pairwise rows with fixed-length random ids (text columns are short placeholders)."""
    responses = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)),
                                         _ids(rng, 2 * rows, response_tokens, vocab))
    numbers = np.arange(start, start + rows)
    nulls = pa.nulls(rows)
    columns = {
        "row_id": pa.array([f"synthetic-{n}" for n in numbers]), "source_file": pa.array(["synthetic"] * rows),
        "source_line": pa.array(numbers, pa.int64()), "kind": pa.array(["pairwise"] * rows),
        "prompt": pa.array([f"prompt {n}" for n in numbers]), "prompt_is_chat": pa.array([False] * rows),
        "responses": pa.array([["a", "b"]] * rows, pa.list_(pa.string())),
        "prompt_ids": _ids(rng, rows, prompt_tokens, vocab), "response_ids": responses,
        "truncated": pa.array([False] * rows),
    }
    return pa.table({f.name: columns[f.name] if f.name in columns else nulls.cast(f.type) for f in STORE_SCHEMA},
                    schema=STORE_SCHEMA)


def synthetic_store(root: str, *, num_rows: int, num_shards: int, prompt_tokens: int = 64,
                    response_tokens: int = 256, seed: int = 0) -> StoreVersion:
    """Write a store of `num_rows` random pairwise rows; each shard is generated and written in turn."""
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, num_rows, num_shards + 1).astype(int)

    def shards() -> Iterator[pa.Table]:
        for start, stop in zip(bounds[:-1], bounds[1:]):
            yield synthetic_shard(rng, int(start), int(stop - start), prompt_tokens=prompt_tokens,
                                  response_tokens=response_tokens)

    counts = {"rows_read": num_rows, "rows_written": num_rows, "rows_rejected": 0, "rejects_by_reason": {}}
    manifest = {"kind": "pairwise", "kinds": {"pairwise": num_rows}, "counts": counts,
                "history": [{"note": "synthetic"}]}
    return StoreVersion(Path(write_version(root, shards(), manifest)))
