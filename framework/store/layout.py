"""On-disk layout: immutable version directories under a store root, and the atomic CURRENT pointer.

    STORE/CURRENT                         name of the current version (replaced with tmp + os.replace)
    STORE/v000001/manifest.json           everything needed to check and describe the version
    STORE/v000001/shards/shard-00000.arrow   Arrow IPC file format, memory-mappable
    STORE/v000001/rejects.jsonl           one line per rejected input row

A version is written completely under STORE/.tmp-<uuid>/ and renamed into place, so a reader never sees
a half-written version, and a crashed build leaves only a .tmp- directory behind.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import pyarrow as pa

import framework
from framework.store.schema import SCHEMA_VERSION

VERSION_PATTERN = re.compile(r"^v(\d{6})$")
SHARD_DIR = "shards"
ROWS_PER_RECORD_BATCH = 65536


def shard_name(index: int) -> str:
    return f"{SHARD_DIR}/shard-{index:05d}.arrow"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def list_versions(root: Path) -> list:
    """Version directory names under a store root, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if VERSION_PATTERN.match(p.name) and p.is_dir())


def read_current(root: Path) -> Optional[str]:
    pointer = root / "CURRENT"
    return pointer.read_text().strip() if pointer.is_file() else None


def set_current(root: Path, name: str) -> None:
    """Point CURRENT at `name` atomically: readers see the old or the new name, never a partial file."""
    tmp = root / f".CURRENT.tmp-{uuid.uuid4().hex}"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / "CURRENT")


def _write_shard(path: Path, table: pa.Table) -> Dict[str, Any]:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=ROWS_PER_RECORD_BATCH)
    return {"rows": table.num_rows, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_version(root: str, shards: Iterable[pa.Table], manifest: Dict[str, Any], *,
                  rejects: Iterable[str] = (), rejects_from: Optional[str] = None,
                  parent: Optional[str] = None, make_current: bool = True) -> Path:
    """Write a new immutable version from shard tables (consumed one at a time) and return its directory.

    `manifest` holds the caller's fields; this adds schema/alignray versions, shards, row count, columns,
    version name, parent and creation time. Rejects are copied from `rejects_from` or written from lines.
    """
    root_path = Path(root)
    root_path.mkdir(parents=True, exist_ok=True)
    tmp = root_path / f".tmp-{uuid.uuid4().hex}"
    (tmp / SHARD_DIR).mkdir(parents=True)
    try:
        entries, columns = [], None
        for index, table in enumerate(shards):
            entries.append({"file": shard_name(index), **_write_shard(tmp / shard_name(index), table)})
            columns = columns or [f.name for f in table.schema]
        if rejects_from is not None:
            shutil.copyfile(rejects_from, tmp / "rejects.jsonl")
        else:
            with open(tmp / "rejects.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(line if line.endswith("\n") else line + "\n" for line in rejects)
        full = dict(manifest, schema_version=SCHEMA_VERSION, alignray_version=framework.__version__,
                    parent=parent, created=_now(), columns=columns or [], shards=entries,
                    num_rows=sum(e["rows"] for e in entries))
        return _publish(root_path, tmp, full, make_current)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(root: Path, tmp: Path, manifest: Dict[str, Any], make_current: bool) -> Path:
    """Rename the finished temp dir to the next free version name; retry if a concurrent writer won it."""
    for _ in range(100):
        existing = [int(VERSION_PATTERN.match(n).group(1)) for n in list_versions(root)]
        name = f"v{max(existing, default=0) + 1:06d}"
        (tmp / "manifest.json").write_text(json.dumps(dict(manifest, version=name), indent=2) + "\n")
        try:
            os.rename(tmp, root / name)  # fails if the name exists and is not an empty directory
        except OSError:
            continue
        if make_current:
            set_current(root, name)
        return root / name
    raise RuntimeError(f"{root}: could not claim a version name")
