"""Will the requested workers fit on this machine? Checked on the driver before an embedded Ray starts.

Seen here (issue 8): 64 one-CPU workers on 2 cores started silently and thrashed for minutes, so an
embedded run refuses CPU requests beyond the machine's cores and a memory estimate beyond what is available,
unless `cluster.allow_oversubscribe=true` (then it warns). No Ray, no model load: parameters are counted from
safetensors headers (or guessed from weight file sizes).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Optional

from framework.config import RunConfig
from framework.errors import UserError

log = logging.getLogger(__name__)
GB = 1024**3
# RSS of one idle Ray Train worker with torch, transformers and DeepSpeed imported (PLATFORM.md: ~600 MB).
WORKER_OVERHEAD_BYTES = 600 * 1024**2
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
ADAM_STATE_BYTES = 8  # two fp32 moments per parameter
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class InfeasibleError(UserError):
    """The run asks more CPUs or memory than the machine (or cluster) has."""


def machine_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> Optional[int]:
    """Bytes available now: MemAvailable, capped by the cgroup v2 limit when one is set."""
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def parameter_count(model_path: Optional[str]) -> int:
    """Parameters of a local HF model dir from its safetensors headers, else weight file sizes / 4; 0 if unknown
    (a hub id, or the built-in demo model before it is built: ~0.1 M parameters)."""
    if not model_path or not Path(model_path).is_dir():
        return 0
    directory = Path(model_path)
    tensors = sorted(directory.glob("*.safetensors"))
    if tensors:
        return sum(_safetensors_parameters(path) for path in tensors)
    return sum(path.stat().st_size for path in directory.glob("*.bin")) // 4


def _safetensors_parameters(path: Path) -> int:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    total = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        total += (end - start) // _SAFETENSORS_BYTES.get(meta["dtype"], 4)
    return total


def worker_memory_bytes(cfg: RunConfig, parameters: int) -> int:
    """A lower bound of one worker's RSS: weights, gradients and Adam state, each partitioned across the workers
    by the ZeRO stage (1: optimizer, 2: + gradients, 3: + weights), a live reference copy when the objective may
    need one, and the fixed process overhead. Activations are not counted."""
    workers, stage = cfg.cluster.num_workers, cfg.deepspeed.zero_stage
    weight = DTYPE_BYTES.get(cfg.model.dtype, 4)
    master = 4 if cfg.deepspeed.dtype != "fp32" else 0  # mixed precision keeps an fp32 master copy
    weights = parameters * weight / (workers if stage >= 3 else 1)
    grads = parameters * weight / (workers if stage >= 2 else 1)
    optimizer = parameters * (ADAM_STATE_BYTES + master) / (workers if stage >= 1 else 1)
    reference = weights if _may_need_live_reference(cfg) else 0
    return int(weights + grads + optimizer + reference + WORKER_OVERHEAD_BYTES)


def _may_need_live_reference(cfg: RunConfig) -> bool:
    from framework.objectives import objective_class

    return objective_class(cfg.objective_name).needs_reference and cfg.data.use_stored_reference != "require"


def check_embedded(cfg: RunConfig) -> None:
    """Refuse (or with `cluster.allow_oversubscribe=true` warn about) an embedded run the machine cannot hold."""
    if cfg.cluster.address or os.environ.get("RAY_ADDRESS"):
        return  # a real cluster: Ray places the workers (see launcher's placement timeout)
    workers, cpus = cfg.cluster.num_workers, cfg.cluster.cpus_per_worker
    cores, memory = machine_cores(), available_memory()
    per_worker = worker_memory_bytes(cfg, parameter_count(cfg.model.path))
    fixes, problems = [], []
    if workers * cpus > cores:
        problems.append(f"{workers} workers x {cpus:g} CPU = {workers * cpus:g} CPUs on {cores} cores")
        fixes.append("cluster.cpus_per_worker=0.5")
    if memory is not None and workers * per_worker > memory:
        problems.append(f"~{workers * per_worker / GB:.1f} GB of memory ({workers} x ~{per_worker / GB:.2f} GB: model, "
                        f"ZeRO-{cfg.deepspeed.zero_stage} state, process) with {memory / GB:.1f} GB available")
        fixes.append("deepspeed=zero3" if cfg.deepspeed.zero_stage < 3 else "model.dtype=bf16")
    if not problems:
        return
    message = (f"the run does not fit this machine: {'; '.join(problems)} "
               "(cluster.num_workers, cluster.cpus_per_worker; embedded Ray)")
    if not cfg.cluster.allow_oversubscribe:
        raise InfeasibleError(message, f"use fewer cluster.num_workers, {', '.join(fixes)}, or "
                                       "cluster.allow_oversubscribe=true to run anyway")
    log.warning("oversubscribed (cluster.allow_oversubscribe=true): %s", message)
