"""Read raw rows from JSONL (plain, .gz, .zst), Parquet and `save_to_disk` Hugging Face datasets.

Readers yield `RawRow`s and never judge content: JSON parsing and validation happen in the tokenisation
workers so that they run in parallel. JSONL rows carry the undecoded line; table rows carry a dict.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Union

from framework.store.errors import StoreError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


class RawRow(NamedTuple):
    """One input row: `line` is 1-based for JSONL, the 0-based row index for Parquet/Arrow tables."""

    file: str
    line: int
    value: Union[bytes, Dict[str, Any]]


def source_format(path: str) -> str:
    """'jsonl', 'parquet' or 'hf_dataset'; raises StoreError for a missing path or an unknown format."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{path}: no such file or directory")
    if p.is_dir():
        if (p / "dataset_dict.json").exists():
            splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
            raise StoreError(f"{path}: a DatasetDict with splits {splits}; pass one split, e.g. {p / splits[0]}"
                             if splits else f"{path}: an empty DatasetDict")
        if (p / "state.json").exists():
            return "hf_dataset"
        raise StoreError(f"{path}: unknown format (a directory that is not a save_to_disk dataset)")
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in JSONL_SUFFIXES:
        return "jsonl"
    if suffixes and suffixes[-1] == ".parquet":
        return "parquet"
    raise StoreError(f"{path}: unknown format (expected .jsonl[.gz|.zst], .parquet or a save_to_disk directory)")


def _open_text_bytes(path: str) -> io.BufferedIOBase:
    kind = COMPRESSED.get(Path(path).suffix.lower())
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _read_jsonl(path: str) -> Iterator[RawRow]:
    try:
        with _open_text_bytes(path) as fh:
            for number, line in enumerate(fh, start=1):
                # Blank lines are separators, not rows; everything else is a row to write or reject.
                if line.strip():
                    yield RawRow(path, number, line)
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated gzip, unreadable file
        raise StoreError(f"{path}: cannot decompress/read ({exc.__class__.__name__}: {exc})") from None
    except Exception as exc:  # zstandard raises its own ZstdError
        if exc.__class__.__name__ == "ZstdError":
            raise StoreError(f"{path}: cannot decompress ({exc})") from None
        raise


def _read_record_batches(path: str, batches: Iterator[Any]) -> Iterator[RawRow]:
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield RawRow(path, index, row)
            index += 1


def _read_parquet(path: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise StoreError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from _read_record_batches(path, parquet.iter_batches(batch_size=4096))


def _read_hf_dataset(path: str) -> Iterator[RawRow]:
    """`Dataset.save_to_disk` output: state.json lists Arrow *stream* files, read here without `datasets`."""
    import pyarrow as pa

    state = json.loads((Path(path) / "state.json").read_text())
    files = [Path(path) / f["filename"] for f in state.get("_data_files", [])]
    if not files:
        raise StoreError(f"{path}: save_to_disk dataset lists no data files in state.json")

    def batches() -> Iterator[Any]:
        for file in files:
            with pa.memory_map(str(file)) as source:
                yield from pa.ipc.open_stream(source)

    yield from _read_record_batches(path, batches())


def read_rows(path: str) -> Iterator[RawRow]:
    """Every row of one source, in file order."""
    reader = {"jsonl": _read_jsonl, "parquet": _read_parquet, "hf_dataset": _read_hf_dataset}[source_format(path)]
    return reader(path)


def source_fingerprint(path: str) -> Dict[str, Any]:
    """sha256 over the source's bytes (every file of a dataset directory, in name order), plus size."""
    p = Path(path)
    files: List[Path] = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    digest, size = hashlib.sha256(), 0
    for file in files:
        digest.update(str(file.relative_to(p) if p.is_dir() else file.name).encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return {"path": os.path.abspath(path), "format": source_format(path), "bytes": size, "sha256": digest.hexdigest()}
