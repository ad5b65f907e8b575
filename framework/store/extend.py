"""`add_columns`: a new store version with extra (or replaced) columns, rows and shards unchanged."""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, Mapping, Optional

import pyarrow as pa

from framework.store.errors import StoreError
from framework.store.layout import write_version
from framework.store.schema import ADDED_COLUMNS, STORE_SCHEMA
from framework.store.version import StoreVersion, _read_shard

# Manifest fields write_version recomputes; everything else carries over from the parent version.
_RECOMPUTED = ("schema_version", "alignray_version", "parent", "created", "columns", "shards", "num_rows", "version")


def _as_array(name: str, values: Any, num_rows: int) -> pa.ChunkedArray:
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    elif not isinstance(values, pa.ChunkedArray):
        values = pa.chunked_array([pa.array(values, type=ADDED_COLUMNS.get(name))])
    if name in ADDED_COLUMNS and values.type != ADDED_COLUMNS[name]:
        values = values.cast(ADDED_COLUMNS[name])
    if len(values) != num_rows:
        raise StoreError(f"column {name!r} has {len(values)} values for {num_rows} rows")
    return values


def _shards(version: StoreVersion, columns: Mapping[str, pa.ChunkedArray]) -> Iterator[pa.Table]:
    start = 0
    for path in version.shard_paths():
        table = _read_shard(path)
        for name, values in columns.items():
            piece = values.slice(start, table.num_rows)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, piece)
            else:
                table = table.append_column(name, piece)
        start += table.num_rows
        yield table


def add_columns(version: StoreVersion, columns: Dict[str, Any], note: str,
                extra_manifest: Optional[Dict[str, Any]] = None) -> StoreVersion:
    """Write version+1 = `version` plus `columns` (one value per row, in row order) and make it current.

    Existing columns of the same name are replaced (e.g. reference log-probs recomputed with another model);
    the base schema's columns cannot be. `extra_manifest` is merged into the new manifest's top level
    (e.g. {"reference": {...fingerprint...}}); `note` is appended to the manifest's history.
    """
    protected = set(columns) & set(STORE_SCHEMA.names)
    if protected:
        raise StoreError(f"cannot replace base columns {sorted(protected)}")
    arrays = {name: _as_array(name, values, version.num_rows) for name, values in columns.items()}
    manifest = {k: copy.deepcopy(v) for k, v in version.manifest.items() if k not in _RECOMPUTED}
    manifest["history"] = manifest.get("history", []) + [{"note": note, "added_columns": sorted(arrays),
                                                          "from_version": version.version}]
    manifest.update(copy.deepcopy(extra_manifest or {}))
    path = write_version(str(version.root), _shards(version, arrays), manifest,
                         rejects_from=str(version.path / "rejects.jsonl"), parent=version.version)
    return StoreVersion(path)
