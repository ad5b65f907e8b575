"""`build_store`: read sources, validate and tokenise in parallel, write a new immutable store version."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from framework.store import ingest
from framework.store.errors import StoreError
from framework.store.grouping import GroupedRow, group_rows
from framework.store.layout import read_current, write_version
from framework.store.schema import KINDS
from framework.store.sources import RawRow, read_rows, source_fingerprint, source_format
from framework.store.tokenize import resolve_tokenizer_path, tokenizer_fingerprint
from framework.store.version import StoreVersion, _list_lengths, _row_lengths

CHUNK_ROWS = 1000
ROWS_PER_SHARD = 50_000


def _chunks(sources: List[str], seen: Counter, options: Mapping[str, Any]) -> Iterator[List[RawRow]]:
    """Raw rows in chunks, counting input rows per source so that an empty source can be reported."""
    chunk: List[RawRow] = []
    for path in sources:
        for row in group_rows(read_rows(path), options["column_map"], options["objectives"]):
            seen[path] += len(row.value.lines) if isinstance(row.value, GroupedRow) else 1
            chunk.append(row)
            if len(chunk) == CHUNK_ROWS:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _run(sources: List[str], tokenizer_path: str, options: Mapping[str, Any], num_proc: int,
         progress: bool, seen: Counter) -> tuple:
    """(tables, rejects, input rows merged into grouped rows) over every source; worker processes when
    num_proc > 1, in-process otherwise."""
    from tqdm import tqdm

    tables, rejects, merged = [], [], 0
    bar = tqdm(desc="store build", unit=" rows", disable=not progress, file=sys.stderr, smoothing=0.1)
    if num_proc > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # fork: children inherit the imported transformers, and no script needs a __main__ guard (spawn
        # would re-run the caller's main module in every worker).
        pool = multiprocessing.get_context("fork").Pool(num_proc, ingest.init_worker, (tokenizer_path, options))
        results = pool.imap(ingest.process_chunk, _chunks(sources, seen, options))
    else:
        pool = None
        ingest.init_worker(tokenizer_path, options)
        results = map(ingest.process_chunk, _chunks(sources, seen, options))
    try:
        for table, chunk_rejects, chunk_merged in results:
            tables += [table] if table is not None else []
            rejects += chunk_rejects
            merged += chunk_merged
            bar.update((table.num_rows if table is not None else 0) + chunk_merged + len(chunk_rejects))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return tables, rejects, merged


def _stats(values: np.ndarray) -> Dict[str, float]:
    if values.size == 0:
        return {}
    q = np.percentile(values, [50, 95, 99])
    return {"min": int(values.min()), "mean": round(float(values.mean()), 2), "p50": float(q[0]),
            "p95": float(q[1]), "p99": float(q[2]), "max": int(values.max())}


def _token_stats(table: pa.Table) -> Dict[str, Any]:
    responses = _list_lengths(pc.list_flatten(table["response_ids"]))
    return {"prompt": _stats(_list_lengths(table["prompt_ids"])), "response": _stats(responses),
            "total": _stats(_row_lengths(table)), "total_tokens": int(responses.sum() + _list_lengths(table["prompt_ids"]).sum())}


def _split(table: pa.Table, num_shards: int) -> Iterator[pa.Table]:
    bounds = np.linspace(0, table.num_rows, num_shards + 1).astype(int)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        yield table.slice(start, stop - start).combine_chunks()


def _check_args(sources: List[str], kind: Optional[str], num_proc: Optional[int]) -> None:
    if not sources:
        raise StoreError("no sources given")
    if kind is not None and kind not in KINDS:
        raise StoreError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if num_proc is not None and num_proc < 1:
        raise StoreError(f"num_proc must be >= 1, got {num_proc}")
    for path in sources:
        source_format(path)  # missing file / unknown format fail here, before any work


def _raise_all_rejected(sources: List[str], rejects: List[Dict[str, Any]], out: Path) -> None:
    """No version is written; the rejects go next to where it would have been, so the user can see why."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rejects.failed-build.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects), encoding="utf-8")
    first = "; ".join(f"{r['file']}:{r['line']} {r['reason']}" + (f" ({r['field']})" if r.get("field") else "")
                      for r in rejects[:3])
    raise StoreError(f"{', '.join(sources)}: no valid rows, all {len(rejects)} rejected (first: {first}); "
                     f"every row's reason is in {path}",
                     "fix the rows, or map other column names with `alignray store build --map COL=FIELD`")


def build_store(sources: List[str], out: str, *, tokenizer: str, kind: Optional[str] = None,
                column_map: Optional[Dict[str, str]] = None, objectives: Optional[List[str]] = None,
                max_prompt_tokens: Optional[int] = None,
                max_response_tokens: Optional[int] = None, truncate: bool = True, num_shards: Optional[int] = None,
                num_proc: Optional[int] = None, progress: bool = True) -> StoreVersion:
    """Ingest `sources` into a new version of the store at `out` (created if needed) and make it current.

    Every row read is either written or rejected into the version's rejects.jsonl; fatal problems (missing
    file, unknown format, empty input, no valid rows) raise StoreError naming the file.
    """
    sources = [str(s) for s in sources]
    _check_args(sources, kind, num_proc)
    tokenizer_path = resolve_tokenizer_path(tokenizer)
    options = {"kind": kind, "column_map": dict(column_map or {}), "objectives": objectives,
               "max_prompt_tokens": max_prompt_tokens, "max_response_tokens": max_response_tokens, "truncate": truncate}
    num_proc = num_proc or max(1, min(os.cpu_count() or 1, 8))
    started, seen = time.perf_counter(), Counter()
    # Loading the tokenizer here also imports transformers before the workers fork, so they inherit it.
    tokenizer_info = tokenizer_fingerprint(tokenizer_path)
    tables, rejects, merged = _run(sources, tokenizer_path, options, num_proc, progress, seen)
    seconds = time.perf_counter() - started
    for path in sources:
        if seen[path] == 0:
            raise StoreError(f"{path}: empty input (no rows)")
    if not tables:
        _raise_all_rejected(sources, rejects, Path(out))
    order = {path: i for i, path in enumerate(sources)}
    rejects.sort(key=lambda r: (order[r["file"]], r["line"]))
    table = pa.concat_tables(tables)
    kinds = Counter(table["kind"].to_pylist())
    rows_read = sum(seen.values())
    manifest = {
        "kind": next(iter(kinds)) if len(kinds) == 1 else "mixed",
        "kinds": dict(kinds),
        "counts": {"rows_read": rows_read, "rows_written": table.num_rows, "rows_rejected": len(rejects),
                   "rows_merged": merged,
                   "rejects_by_reason": dict(Counter(r["reason"] for r in rejects).most_common()),
                   "truncated": int(pc.sum(table["truncated"]).as_py() or 0),
                   "duplicate_row_ids": table.num_rows - len(pc.unique(table["row_id"]))},
        "token_lengths": _token_stats(table),
        "tokenizer": tokenizer_info,
        "sources": [dict(source_fingerprint(p), rows=seen[p]) for p in sources],
        "build": dict(options, num_proc=num_proc, seconds=round(seconds, 3),
                      rows_per_second=round(rows_read / max(seconds, 1e-9), 1)),
        "history": [{"note": "build", "sources": sources}],
    }
    shards = num_shards or max(1, math.ceil(table.num_rows / ROWS_PER_SHARD))
    shards = max(1, min(shards, table.num_rows))
    parent = read_current(Path(out))
    path = write_version(out, _split(table, shards), manifest, parent=parent,
                         rejects=(json.dumps(r, ensure_ascii=False) for r in rejects))
    if progress:
        print(f"store build: {rows_read:,} rows read, {table.num_rows:,} written, {len(rejects):,} rejected in "
              f"{seconds:.1f} s ({rows_read / max(seconds, 1e-9):,.0f} rows/s) -> {path}", file=sys.stderr)
    return StoreVersion(path)
