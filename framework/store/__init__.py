"""The sharded Arrow preference store: one schema for every feedback kind (SCHEMA.md).

    build_store(sources, out, ...) -> StoreVersion      validated, tokenised ingest into a new version
    open_store(path) -> StoreVersion                    a store root (its CURRENT version) or a version dir
    add_columns(version, columns, note, extra) -> StoreVersion   a new version with extra columns
    verify(version) -> list of problems                 re-hash shards against the manifest
    EpochSampler                                        per-rank, resumable, exactly-once batch plans

Importing this package loads pyarrow and numpy only; transformers is imported when a build tokenises.
"""

from framework.store.build import build_store
from framework.store.errors import StoreError
from framework.store.extend import add_columns
from framework.store.sampler import Batch, EpochSampler
from framework.store.schema import KINDS, SCHEMA_VERSION, STORE_SCHEMA
from framework.store.version import StoreVersion, open_store, verify

__all__ = ["Batch", "EpochSampler", "KINDS", "SCHEMA_VERSION", "STORE_SCHEMA", "StoreError", "StoreVersion",
           "add_columns", "build_store", "open_store", "verify"]
