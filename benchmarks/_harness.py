"""Shared pieces of the benchmarks: machine and versions, steady-state rates, child processes, dated results.

A benchmark that compares programs runs each side in its own process (`run_child`), in interleaved repeats, and
keeps every repeat; `steady_state` turns a child's per-step timings into rates after a warm-up.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def environment() -> Dict[str, Any]:
    """Library versions and machine facts, for the results JSON."""
    import deepspeed
    import ray
    import torch
    import transformers
    import trl

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "deepspeed": deepspeed.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
            "platform": platform.platform(), "load_avg": os.getloadavg()}


def steady_state(steps: Sequence[Dict[str, float]], warmup: int) -> Dict[str, float]:
    """Rates over the steps after `warmup`. Each step: `step`, `end` (wall clock at its end), `compute` (seconds
    inside the step) and optionally `tokens`. `interval` rates use the time between consecutive step ends, so they
    include batch building and logging; the median interval is robust to a few steps preempted by other jobs."""
    ordered = sorted(steps, key=lambda s: s["step"])
    kept = [s for s in ordered if s["step"] > warmup]
    previous = {s["step"]: s["end"] for s in ordered}
    kept = [s for s in kept if s["step"] - 1 in previous]  # the interval of step k needs step k-1's end
    if len(kept) < 2:
        raise ValueError(f"only {len(kept)} timed steps after warm-up {warmup}: raise the number of steps")
    intervals = [s["end"] - previous[s["step"] - 1] for s in kept]
    compute = sum(s["compute"] for s in kept)
    rates = {"steps_measured": len(kept), "interval_steps_per_s": round(len(kept) / sum(intervals), 3),
             "median_interval_steps_per_s": round(1.0 / statistics.median(intervals), 3),
             "compute_steps_per_s": round(len(kept) / compute, 3)}
    if all("tokens" in s for s in kept):
        rates["tokens_per_step"] = round(sum(s["tokens"] for s in kept) / len(kept), 1)
    return rates


def time_breakdown(rows: Iterable[Dict[str, Any]]) -> Dict[str, float]:
    """Mean of every `time/*` key (seconds per step) over the metric rows that carry it."""
    sums: Dict[str, List[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("time/") and isinstance(value, (int, float)):
                sums.setdefault(key, []).append(float(value))
    return {key: round(statistics.fmean(values), 6) for key, values in sorted(sums.items())}


def child_env(threads: int) -> Dict[str, str]:
    """Environment of a measured child: its thread budget, offline, no GPU, the checkout importable."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", RAY_USAGE_STATS_ENABLED="0")


def run_child(module: str, name: str, args: Sequence[str], threads: int, work: Path, timeout_s: float) -> Dict[str, Any]:
    """Run `python -m module *args --result FILE` in its own process group; returns what the child wrote to FILE
    plus `process_wall_s` (launch → exit, as a user sees it), `launched_at` and the load average around it."""
    result_file = work / f"{name}.json"
    log_file = work / f"{name}.log"
    print(f"[{name}] {' '.join(args)}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    launched_at, started = time.time(), time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *args, "--result", str(result_file)], cwd=REPO,
                                env=child_env(threads), start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's group only
            proc.wait()
            raise RuntimeError(f"{name} took over {timeout_s:.0f} s; log: {log_file}") from None
    if code != 0:
        raise RuntimeError(f"{name} exited {code}; log: {log_file}")
    raw = json.loads(result_file.read_text())
    return {**raw, "process_wall_s": round(time.perf_counter() - started, 1), "launched_at": launched_at,
            "threads_per_process": threads, "load_avg_1m_before": round(load_before, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2)}


def interleaved(plan: Sequence[Any], repeats: int) -> Iterable[tuple]:
    """(repeat, item) in rounds, the order reversed every other round so drifting load hits every item alike."""
    for round_ in range(repeats):
        for item in (plan if round_ % 2 == 0 else plan[::-1]):
            yield round_, item


def best(repeats: Sequence[Dict[str, Any]], key: str) -> Dict[str, Any]:
    """The least disturbed repeat (highest `key`), with `key` of every repeat beside it."""
    top = max(repeats, key=lambda r: r[key])
    return {**top, f"{key}_all": [r[key] for r in repeats]}


def result_path(stem: str, out: Optional[str]) -> Path:
    """`out` when given, else benchmarks/results/<stem>-<date>.json."""
    path = Path(out) if out else RESULTS / f"{stem}-{dt.date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
