"""`add_columns`: a new store version with extra (or replaced) columns, rows and shards unchanged; and
`with_objective`, which turns a pairwise or multi row into a multi row carrying one more objective."""

from __future__ import annotations

import copy
from typing import Any, Collection, Dict, Iterator, List, Mapping, Optional, Sequence

import pyarrow as pa

from framework.store.errors import StoreError
from framework.store.layout import write_version
from framework.store.schema import ADDED_COLUMNS, STORE_SCHEMA
from framework.store.version import StoreVersion, _read_shard

# Manifest fields write_version recomputes; everything else carries over from the parent version.
_RECOMPUTED = ("schema_version", "alignray_version", "parent", "created", "columns", "shards", "num_rows", "version")


def _as_array(name: str, values: Any, num_rows: int) -> pa.ChunkedArray:
    expected = STORE_SCHEMA.field(name).type if name in STORE_SCHEMA.names else ADDED_COLUMNS.get(name)
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    elif not isinstance(values, pa.ChunkedArray):
        values = pa.chunked_array([pa.array(values, type=expected)])
    if expected is not None and values.type != expected:
        values = values.cast(expected)
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
                index = table.column_names.index(name)
                # Keep the field's nullability: a replaced base column still satisfies the base schema.
                table = table.set_column(index, table.schema.field(index).with_type(piece.type), piece)
            else:
                table = table.append_column(name, piece)
        start += table.num_rows
        yield table


def add_columns(version: StoreVersion, columns: Dict[str, Any], note: str,
                extra_manifest: Optional[Dict[str, Any]] = None, replace_base: Collection[str] = ()) -> StoreVersion:
    """Write version+1 = `version` plus `columns` (one value per row, in row order) and make it current.

    Existing columns of the same name are replaced (e.g. reference log-probs recomputed with another model);
    the base schema's columns only when named in `replace_base` (`store add-scores` rewrites pairwise rows
    as multi ones), and then with their base type. `extra_manifest` is merged into the new manifest's top
    level (e.g. {"reference": {...fingerprint...}}); `note` is appended to the manifest's history.
    """
    protected = set(columns) & set(STORE_SCHEMA.names) - set(replace_base)
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


# Columns `with_objective` reads, and the base columns it rewrites (turning pairwise rows into multi ones).
OBJECTIVE_INPUT_COLUMNS = ("row_id", "kind", "prompt", "prompt_is_chat", "responses", "scores", "label",
                           "objective_names", "objective_scores", "response_prompts")
OBJECTIVE_OUTPUT_COLUMNS = ("row_id", "kind", "scores", "objective_names", "objective_scores")
PREFERENCE = "preference"  # a pairwise row's human label as an objective: one-hot, chosen first


def objectives_of(kind: str, names: Optional[Sequence[str]]) -> List[str]:
    """The objectives a row has before a score is added: a pairwise row's label is the objective "preference"."""
    if kind == "pairwise":
        return [PREFERENCE]
    if kind == "multi":
        return list(names or [])
    raise StoreError(f"cannot add objective scores to {kind} rows", "use a pairwise (chosen first) or multi store")


def check_new_objective(version: StoreVersion, name: str, replace: bool) -> None:
    """Fail before any model runs: rows of a kind other than pairwise/multi, an empty name, or (without
    `replace`) a name some row already has as an objective."""
    if not name or not name.strip() or name != name.strip():
        raise StoreError(f"objective name {name!r} is empty or has surrounding spaces", "pass e.g. --name helpful")
    table = version.table(columns=["kind", "objective_names"])
    seen = {(kind, tuple(names or ())) for kind, names in zip(table.column("kind").to_pylist(),
                                                              table.column("objective_names").to_pylist())}
    for kind, names in sorted(seen):
        if kind not in ("pairwise", "multi"):
            raise StoreError(f"store {version.path} holds {kind} rows; reward-model scores can be added to pairwise "
                             "or multi rows only", "build the store from chosen/rejected pairs or multi rows")
        if name in objectives_of(kind, names) and not replace:
            raise StoreError(f"store {version.path} already has an objective named {name!r} "
                             f"({', '.join(objectives_of(kind, names))})",
                             "pick another --name, or pass --replace to overwrite its scores")


def with_objective(row: Mapping[str, Any], name: str, rewards: Sequence[float]) -> Dict[str, Any]:
    """`row` (OBJECTIVE_INPUT_COLUMNS) as a multi row whose objective `name` scores response k with rewards[k]:
    appended, or overwriting an objective of that name. A pairwise row's label becomes the first objective
    "preference" ([1, r(chosen)], [0, r(rejected)]) and its overall `scores` [1, 0] unless it had scores, as
    `store build --kind multi` does for chosen/rejected rows. `row_id` is recomputed: it is the id the build
    path gives the same example."""
    from framework.store.normalize import row_id

    names = objectives_of(row["kind"], row["objective_names"])
    if row["kind"] == "pairwise":
        table, scores = [[1.0], [0.0]], row["scores"] or [1.0, 0.0]
    else:
        table, scores = [list(r) for r in row["objective_scores"]], row["scores"]
    if name in names:
        column = names.index(name)
        table = [r[:column] + [float(v)] + r[column + 1 :] for r, v in zip(table, rewards)]
    else:
        names, table = names + [name], [r + [float(v)] for r, v in zip(table, rewards)]
    example = dict(row, kind="multi", scores=scores, objective_names=names, objective_scores=table)
    return dict(example, row_id=row_id(example))
