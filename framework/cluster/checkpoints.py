"""Crash-safe checkpoint publishing on Ray Train storage, and finding the newest complete checkpoint.

Ray Train 2.60's default upload (`StorageContext.persist_current_checkpoint`) copies every rank's files straight
into `<experiment>/<checkpoint_dir_name>`: a worker killed mid-copy leaves a half-written directory under the
final name. Ray itself never restores it (its checkpoint manager registers a checkpoint only after every rank's
report arrived), but anyone scanning the storage (`resume=auto`, an export, a person) would see it.

So each rank uploads into a staging directory `.staging-<name>`; after a barrier every rank has finished,
rank 0 writes `COMMITTED.json` and publishes:
- local / POSIX storage: one `rename(staging, final)`: the final name appears complete or not at all;
- object stores (no rename): copy to the final name, then write `COMMITTED.json` last.
A checkpoint counts as complete only if `COMMITTED.json` is there, on both kinds of storage.

Test hook (tests only, documented in docs/fault-tolerance.md): `ALIGNRAY_TEST_SLOW_PUBLISH="<step>:<file>"`
parks every rank after its staging upload of that step's checkpoint (announcing it with `<file>.rank<r>.waiting`)
until `<file>` exists, so a test can SIGKILL a worker while a save is in flight.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

log = logging.getLogger(__name__)
COMMIT_FILE = "COMMITTED.json"
STAGING_PREFIX = ".staging-"
SLOW_PUBLISH_ENV = "ALIGNRAY_TEST_SLOW_PUBLISH"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def _slow_publish_hook(step: int, rank: int) -> None:
    """Test hook: park this rank inside the publish of `step` until a release file exists (at most 10 min)."""
    spec = os.environ.get(SLOW_PUBLISH_ENV)
    if not spec or int(spec.split(":", 1)[0]) != step:
        return
    release = Path(spec.split(":", 1)[1])
    Path(f"{release}.rank{rank}.waiting").touch()  # tells the test this rank is mid-save
    deadline = time.monotonic() + 600
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def make_publisher(step: int, rank: int, world_size: int, barrier: Callable[[], None]) -> Callable[[Any, str], Any]:
    """A `checkpoint_upload_fn` for `ray.train.report`: staging upload, barrier, atomic publish by rank 0.

    Every rank must report the same step (the barriers are collectives)."""

    def publish(checkpoint: Any, dir_name: str) -> Any:
        import pyarrow.fs
        import ray.train

        storage = ray.train.get_context().get_storage()
        fs, base = storage.storage_filesystem, storage.experiment_fs_path
        staging, final = f"{base}/{STAGING_PREFIX}{dir_name}", f"{base}/{dir_name}"
        if rank == 0:  # leftovers of an attempt that died in this same step (after a restart)
            _delete_if_exists(fs, staging)
            fs.create_dir(staging, recursive=True)
        barrier()
        pyarrow.fs.copy_files(checkpoint.path, staging, source_filesystem=checkpoint.filesystem,
                              destination_filesystem=fs)
        _slow_publish_hook(step, rank)
        barrier()  # every rank's files are in staging
        if rank == 0:
            _commit(fs, staging, final, {"step": step, "world_size": world_size, "time": time.time()})
        barrier()  # the final directory exists before any rank hands it to Ray
        return ray.train.Checkpoint(path=final, filesystem=fs)

    return publish


def _delete_if_exists(fs: Any, path: str) -> None:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


def _commit(fs: Any, staging: str, final: str, record: Dict[str, Any]) -> None:
    import pyarrow.fs

    # The same step published by an attempt that died before Ray registered it: same content, replace it.
    _delete_if_exists(fs, final)
    payload = json.dumps(record).encode()
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        with fs.open_output_stream(f"{staging}/{COMMIT_FILE}") as f:
            f.write(payload)
        fs.move(staging, final)  # rename(2): atomic on one POSIX filesystem
        return
    pyarrow.fs.copy_files(staging, final, source_filesystem=fs, destination_filesystem=fs)
    with fs.open_output_stream(f"{final}/{COMMIT_FILE}") as f:  # one object PUT: atomic, and written last
        f.write(payload)
    fs.delete_dir(staging)


def commit_record(path: str) -> Optional[Dict[str, Any]]:
    """The commit record of a checkpoint directory (local path or URI), or None if it was never completed."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(path) if "://" in path else (pyarrow.fs.LocalFileSystem(), path)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{COMMIT_FILE}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, ValueError):
        return None


def committed_checkpoints(storage: str) -> List[str]:
    """Complete checkpoints of every run under `storage` (`<storage>/<run>/checkpoint-*`), oldest commit first."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage) if "://" in storage else (pyarrow.fs.LocalFileSystem(), storage)
    prefix = storage[: len(storage) - len(root)] if "://" in storage else ""
    found = []
    try:
        runs = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    for run in runs:
        if run.type != pyarrow.fs.FileType.Directory:
            continue
        for entry in fs.get_file_info(pyarrow.fs.FileSelector(run.path, allow_not_found=True)):
            if entry.type == pyarrow.fs.FileType.Directory and entry.base_name.startswith("checkpoint-"):
                record = commit_record(prefix + entry.path)
                if record is not None:
                    found.append((float(record.get("time", 0.0)), int(record.get("step", 0)), prefix + entry.path))
    return [path for _, _, path in sorted(found)]


def newest_in_run(checkpoint_path: str) -> str:
    """The newest committed checkpoint of the run `checkpoint_path` belongs to (by step). Ray registers a
    checkpoint only when its controller next polls the workers (~every 2 s), so after a fast failure the one it
    hands back can be older than the last one this run committed; both are complete, the newer loses less."""
    import pyarrow.fs

    if "://" in checkpoint_path:
        fs, path = pyarrow.fs.FileSystem.from_uri(checkpoint_path)
        prefix = checkpoint_path[: len(checkpoint_path) - len(path)]
    else:
        fs, path, prefix = pyarrow.fs.LocalFileSystem(), checkpoint_path, ""
    run_dir = path.rstrip("/").rsplit("/", 1)[0]
    best, best_step = checkpoint_path, int((commit_record(checkpoint_path) or {}).get("step", -1))
    for entry in fs.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True)):
        if entry.type == pyarrow.fs.FileType.Directory and entry.base_name.startswith("checkpoint-"):
            record = commit_record(prefix + entry.path)
            if record is not None and int(record.get("step", -1)) > best_step:
                best, best_step = prefix + entry.path, int(record["step"])
    return best


def latest_checkpoint(storage: str) -> Optional[str]:
    """The most recently committed checkpoint under `storage`, or None. Staging and half-copied
    directories (a crash during a save) have no commit record and are never returned."""
    found = committed_checkpoints(storage)
    return found[-1] if found else None


def require_committed(path: str) -> str:
    """`resume=PATH` must name a complete checkpoint; say what is wrong otherwise."""
    if commit_record(path) is None:
        hint = " (a staging directory: that save never finished)" if Path(path).name.startswith(STAGING_PREFIX) else ""
        raise ValueError(f"resume={path} is not a complete alignray checkpoint: no {COMMIT_FILE}{hint}. "
                         "Use resume=auto or a checkpoint-NNNNNN directory listed by the run.")
    return path
