"""Open a store version and read it by memory-mapping its Arrow IPC shards.

Why direct Arrow mapping and not Ray Data: a row is addressed by one global index, so the sampler can
prove that every row is read exactly once per epoch and resume at an exact position; Ray Data's streaming
split has no per-sample resumable position. Mapping keeps reads zero-copy: `take` copies only the
requested rows out of the mapped record batches, and hands the touched pages back to the kernel as they
accumulate, so a worker's resident memory does not grow with the store's size.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from framework.store.errors import StoreError
from framework.store.layout import file_sha256, read_current
from framework.store.schema import SCHEMA_VERSION

# Unmap after roughly this many bytes of mapped pages have been touched (see `_record_batches`).
DROP_PAGES_AFTER_BYTES = 64 << 20
# Up to this many rows, `take` returns one-row slices (no copy); beyond, Arrow's take kernel copies.
SLICE_ROWS = 512


def _read_shard(path: Path, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """The shard as a table whose buffers point into a memory map (no copy)."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    return table.select(list(columns)) if columns is not None else table


class StoreVersion:
    """One immutable version of a store: its manifest plus memory-mapped access to its rows."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self.root = self.path.parent
        try:
            self.manifest: Dict[str, Any] = json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path / 'manifest.json'}: unreadable manifest ({exc})") from None
        if self.manifest.get("schema_version", 0) > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {self.manifest['schema_version']} is newer than "
                             f"this alignray understands ({SCHEMA_VERSION})")
        rows = [shard["rows"] for shard in self.manifest["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).astype(np.int64)
        self._batches: Optional[tuple] = None
        self._shared_baseline: Optional[int] = None
        self._maps: List[mmap.mmap] = []

    @property
    def version(self) -> str:
        return self.path.name

    @property
    def num_rows(self) -> int:
        return int(self._offsets[-1])

    @property
    def kind(self) -> str:
        """pairwise | ranked | binary | multi, or "mixed" when a build held several kinds."""
        return self.manifest["kind"]

    @property
    def columns(self) -> List[str]:
        return list(self.manifest["columns"])

    def shard_paths(self) -> List[Path]:
        return [self.path / shard["file"] for shard in self.manifest["shards"]]

    def table(self, columns: Optional[Sequence[str]] = None) -> pa.Table:
        """All rows, shards concatenated in order; buffers stay memory-mapped while the table lives."""
        tables = [_read_shard(p, columns) for p in self.shard_paths()]
        return pa.concat_tables(tables) if tables else pa.table({})

    def _record_batches(self) -> tuple:
        """(global first row of every record batch, the batches): zero-copy views into memory-mapped shards.

        Opening costs only the footers; pages are read when rows are taken. The shards are mapped with
        Python's mmap so that `_drop_pages` can hand touched pages back (madvise) without unmapping.
        """
        if self._batches is None:
            starts, batches, maps = [], [], []
            for shard, path in enumerate(self.shard_paths()):
                with open(path, "rb") as fh:
                    maps.append(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
                if hasattr(mmap, "MADV_RANDOM"):  # batches jump around: no read-around on page faults
                    maps[-1].madvise(mmap.MADV_RANDOM)
                reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(maps[-1])))
                row = int(self._offsets[shard])
                for index in range(reader.num_record_batches):
                    batches.append(reader.get_batch(index))
                    starts.append(row)
                    row += batches[-1].num_rows
            self._batches, self._maps = (np.asarray(starts, dtype=np.int64), batches), maps
            self._shared_baseline = _shared_resident_bytes()
        return self._batches

    def _drop_pages(self) -> None:
        """Once the mapped pages we touched exceed DROP_PAGES_AFTER_BYTES, drop them from our resident set.

        Pages of a shared read-only file mapping are clean page cache: MADV_DONTNEED only removes them from
        our page tables (a later read faults them in again), so a long epoch does not pile them up in the
        worker's RSS, which a container's memory limit would count. The growth is measured, not estimated:
        a fault can map a whole large folio (megabytes on recent ext4), far more than the rows read.
        """
        shared = _shared_resident_bytes()
        if shared is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        if shared - (self._shared_baseline or shared) > DROP_PAGES_AFTER_BYTES:
            for region in self._maps:
                region.madvise(mmap.MADV_DONTNEED)
            # Re-measure: libraries loaded meanwhile stay resident and must not count as our pages.
            self._shared_baseline = _shared_resident_bytes() or shared

    def __getstate__(self) -> Dict[str, Any]:
        """Picklable (e.g. shipped to Ray workers): the mapped views are rebuilt on the other side."""
        return dict(self.__dict__, _batches=None, _maps=[], _shared_baseline=None)

    def release(self) -> None:
        """Forget the mapped views (the maps close once no taken table refers to them)."""
        self._batches, self._maps = None, []

    def take(self, indices: Sequence[int], columns: Optional[Sequence[str]] = None) -> pa.Table:
        """The rows at `indices` (global row numbers), in that order.

        Small requests (training micro-batches) are zero-copy one-row slices of the mapped record batches;
        large ones use Arrow's take per record batch (taking from a multi-chunk table would first
        concatenate whole columns). Either way only the pages of the requested rows are touched.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_rows):
            raise IndexError(f"row index out of range [0, {self.num_rows}) in {self.path}")
        if idx.size == 0:
            return self.table(columns).slice(0, 0)
        starts, batches = self._record_batches()
        batch_of = np.searchsorted(starts, idx, side="right") - 1
        selected = {b: batches[b] if columns is None else batches[b].select(list(columns)) for b in np.unique(batch_of)}
        if idx.size <= SLICE_ROWS:
            result = pa.Table.from_batches([selected[b].slice(i - starts[b], 1) for i, b in zip(idx, batch_of)])
        else:
            result = self._take_grouped(idx, batch_of, starts, selected)
        self._drop_pages()
        return result

    @staticmethod
    def _take_grouped(idx: np.ndarray, batch_of: np.ndarray, starts: np.ndarray, selected: Dict[int, Any]) -> pa.Table:
        pieces = [selected[b].take(pa.array(idx[batch_of == b] - starts[b])) for b in sorted(selected)]
        grouped = pa.Table.from_batches(pieces)
        if len(pieces) == 1:
            return grouped
        # The pieces hold the rows grouped by record batch (stably); put them back in the order asked for.
        order = np.argsort(batch_of, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return grouped.take(pa.array(inverse))

    def token_lengths(self) -> np.ndarray:
        """Per row: prompt tokens + tokens of the longest response (per-response prompts when present)."""
        parts = []
        has_per_prompt = "response_prompt_ids" in self.columns
        for path in self.shard_paths():
            table = _read_shard(path, ["prompt_ids", "response_ids"] + (["response_prompt_ids"] if has_per_prompt else []))
            parts.append(_row_lengths(table))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def rejects(self) -> List[Dict[str, Any]]:
        with open(self.path / "rejects.jsonl", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def __repr__(self) -> str:
        return f"StoreVersion({str(self.path)!r}, rows={self.num_rows}, kind={self.kind!r})"


def _shared_resident_bytes() -> Optional[int]:
    """File-backed + shared resident bytes of this process (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return None


def _list_lengths(column: pa.ChunkedArray) -> np.ndarray:
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def _row_lengths(table: pa.Table) -> np.ndarray:
    prompt = _list_lengths(table["prompt_ids"])
    flat = pc.list_flatten(table["response_ids"])
    parent = pc.list_parent_indices(table["response_ids"]).to_numpy(zero_copy_only=False)
    per_response = _list_lengths(flat)
    if "response_prompt_ids" in table.column_names and table["response_prompt_ids"].null_count < table.num_rows:
        # Rows with their own prompt per response: the prompt column length is replaced by the per-response one.
        own = table["response_prompt_ids"]
        has_own = pc.is_valid(own).to_numpy(zero_copy_only=False)
        own_lengths = _list_lengths(pc.list_flatten(own.filter(pc.is_valid(own))))
        per_response = per_response.copy()
        mask = has_own[parent]
        per_response[mask] += own_lengths
        prompt = np.where(has_own, 0, prompt)
    longest = np.zeros(table.num_rows, dtype=np.int64)
    np.maximum.at(longest, parent, per_response)
    return prompt + longest


def open_store(path: str) -> StoreVersion:
    """A store root (resolves CURRENT) or a version directory."""
    p = Path(path)
    if (p / "manifest.json").is_file():
        return StoreVersion(p)
    current = read_current(p)
    if current is None:
        raise StoreError(f"{path}: not a store (no CURRENT file) nor a store version (no manifest.json)")
    if not (p / current / "manifest.json").is_file():
        raise StoreError(f"{path}: CURRENT names {current!r}, which has no manifest.json")
    return StoreVersion(p / current)


def verify(version: StoreVersion) -> List[str]:
    """Problems found by re-hashing every shard and checking it against the manifest (empty = intact)."""
    problems = []
    for shard, path in zip(version.manifest["shards"], version.shard_paths()):
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if path.stat().st_size != shard["bytes"] or file_sha256(path) != shard["sha256"]:
            problems.append(f"{path}: sha256 mismatch (corrupted or modified)")
            continue
        try:
            table = _read_shard(path)
        except pa.ArrowException as exc:
            problems.append(f"{path}: unreadable Arrow file ({exc})")
            continue
        if table.num_rows != shard["rows"] or table.column_names != version.columns:
            problems.append(f"{path}: rows/columns differ from the manifest")
    counts = version.manifest.get("counts", {})
    accounted = counts and counts["rows_written"] + counts.get("rows_merged", 0) + counts["rows_rejected"]
    if counts and counts["rows_read"] != accounted:
        problems.append(f"{version.path}/manifest.json: rows_read != rows_written + rows_merged + rows_rejected")
    if counts and counts["rows_written"] != version.num_rows:
        problems.append(f"{version.path}/manifest.json: rows_written != rows in shards")
    rejects_path = version.path / "rejects.jsonl"
    if counts and (not rejects_path.is_file() or sum(1 for _ in open(rejects_path, "rb")) != counts["rows_rejected"]):
        problems.append(f"{rejects_path}: line count != rows_rejected")
    return problems
