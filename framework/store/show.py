"""Human views of a store version for the CLI: `info` (counts, lengths, provenance) and `sample` (decoded rows)."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict

import numpy as np

from framework.store.errors import StoreError
from framework.store.layout import list_versions, read_current
from framework.store.version import StoreVersion, open_store

PREVIEW_CHARS = 300


def summary(version: StoreVersion) -> Dict[str, Any]:
    """The machine-readable `store info --json` document (counts at the top level)."""
    manifest, counts = version.manifest, version.manifest.get("counts", {})
    return {
        "path": str(version.path), "root": str(version.root), "version": version.version,
        "current": read_current(version.root), "versions": list_versions(version.root),
        "parent": manifest.get("parent"), "created": manifest.get("created"),
        "schema_version": manifest.get("schema_version"), "alignray_version": manifest.get("alignray_version"),
        "kind": version.kind, "kinds": manifest.get("kinds"), "num_rows": version.num_rows,
        "rows_read": counts.get("rows_read"), "rows_written": counts.get("rows_written"),
        "rows_merged": counts.get("rows_merged", 0),
        "rows_rejected": counts.get("rows_rejected"), "rejects_by_reason": counts.get("rejects_by_reason", {}),
        "truncated": counts.get("truncated"), "duplicate_row_ids": counts.get("duplicate_row_ids"),
        "columns": version.columns, "num_shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]), "token_lengths": manifest.get("token_lengths"),
        "tokenizer": manifest.get("tokenizer"), "sources": manifest.get("sources"), "build": manifest.get("build"),
        "history": manifest.get("history"),
        **{k: v for k, v in manifest.items() if k in ("reference", "self_samples", "aligned_lms")},
    }


def info(args: argparse.Namespace) -> int:
    data = summary(open_store(args.path))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    lengths = data["token_lengths"] or {}
    print(f"store {data['root']}  version {data['version']} (current {data['current']}, parent {data['parent']})")
    print(f"kind {data['kind']}  rows {data['num_rows']:,} in {data['num_shards']} shards, {data['bytes']:,} bytes")
    merged = f" (+{data['rows_merged']:,} input rows grouped in)" if data["rows_merged"] else ""
    print(f"rows read {data['rows_read']:,}  written {data['rows_written']:,}{merged}  rejected {data['rows_rejected']:,}"
          f"  truncated {data['truncated']:,}")
    for reason, count in data["rejects_by_reason"].items():
        print(f"  rejected {reason:<28} {count:,}")
    for name in ("prompt", "response", "total"):
        if lengths.get(name):
            stats = lengths[name]
            print(f"tokens {name:<9} min {stats['min']}  p50 {stats['p50']:.0f}  p95 {stats['p95']:.0f}  max {stats['max']}")
    tokenizer = data["tokenizer"] or {}
    print(f"tokenizer {tokenizer.get('path')} sha256 {str(tokenizer.get('sha256'))[:16]}")
    for source in data["sources"] or []:
        print(f"source {source['path']} ({source['format']}, {source['rows']:,} rows, sha256 {source['sha256'][:16]})")
    if data.get("reference"):
        ref = data["reference"]
        print(f"reference log-probs from {ref.get('model')} (max_length {ref.get('max_length')}, max_prompt_length "
              f"{ref.get('max_prompt_length')}, fingerprint {str(ref.get('fingerprint'))[:16]})")
    if data.get("self_samples"):
        print(f"self-samples: {data['self_samples'].get('k')} per prompt from {data['self_samples'].get('model')}")
    if data.get("aligned_lms"):
        print(f"aligned-LM log-probs from {', '.join(data['aligned_lms'].get('models', []))}")
    print(f"columns {', '.join(data['columns'])}")
    return 0


def _decoder(version: StoreVersion) -> Any:
    path = (version.manifest.get("tokenizer") or {}).get("path")
    try:
        from framework.store.tokenize import load_tokenizer

        return load_tokenizer(path)
    except StoreError:
        return None


def _clip(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def sample(args: argparse.Namespace) -> int:
    """Print n random rows; text is decoded from the stored token ids (so it shows what training sees)."""
    version = open_store(args.path)
    rng = np.random.default_rng(args.seed)
    indices = sorted(rng.choice(version.num_rows, size=min(args.n, version.num_rows), replace=False).tolist())
    rows = version.take(indices).to_pylist()
    tokenizer = _decoder(version)
    decode = (lambda ids: tokenizer.decode(ids)) if tokenizer is not None else None
    if decode is None:
        print("(tokenizer from the manifest not found: showing stored text instead of decoded ids)")
    for index, row in zip(indices, rows):
        print(f"--- row {index}  id {row['row_id']}  {row['kind']}  {row['source_file']}:{row['source_line']}"
              + (f"  truncated" if row["truncated"] else ""))
        print(f"prompt ({len(row['prompt_ids'])} tok): {_clip(decode(row['prompt_ids']) if decode else row['prompt'])}")
        for k, ids in enumerate(row["response_ids"]):
            notes = []
            if row["scores"] is not None:
                notes.append(f"score {row['scores'][k]:g}")
            if row["label"] is not None:
                notes.append("desirable" if row["label"] else "undesirable")
            if row["objective_scores"] is not None:
                notes.append(", ".join(f"{n} {s:g}" for n, s in zip(row["objective_names"], row["objective_scores"][k])))
            if row.get("ref_logps") is not None:
                notes.append(f"ref_logp {row['ref_logps'][k]:.3f}")
            text = decode(ids) if decode else row["responses"][k]
            tag = "chosen" if row["kind"] == "pairwise" and k == 0 else ("rejected" if row["kind"] == "pairwise" else f"response {k}")
            print(f"  {tag} ({len(ids)} tok{'; ' + '; '.join(notes) if notes else ''}): {_clip(text)}")
    return 0
