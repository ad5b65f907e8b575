"""Step-time breakdown: host wall time per phase of a training step, reported as `time/<phase>` (seconds).

Phases: `data` (waiting for / building the batch), `forward` (policy and reference forwards, the objective and
its metrics), `backward` (including the gradient reductions ZeRO-2/3 issue in it), `optimizer` (DeepSpeed's step,
with its gradient-norm all-reduce), `comm` (the collectives the loop issues: example counts, then finiteness,
metrics and stop flag in one) and `logging` (metrics.jsonl, TensorBoard, metric-only Ray reports) — of the
*previous* step, since a line cannot hold the time of its own writing. `step_time` spans forward to comm plus
bookkeeping in no phase; `data` and `logging` lie outside it. Evaluation and checkpoints are in no phase. On an accelerator the host returns before the device finishes, so the split is only
exact with `train.sync_timing=true`, which synchronises the device at each phase boundary (slower; off by default).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

PHASES = ("data", "forward", "backward", "optimizer", "comm", "logging")


class PhaseTimer:
    """Sums host wall time per phase until `take()` hands the totals out and starts again."""

    def __init__(self, synchronize: Optional[Callable[[], None]] = None) -> None:
        self._synchronize = synchronize
        self._totals: Dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._synchronize is not None:
            self._synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._synchronize is not None:
                self._synchronize()
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self._totals[name] += seconds

    def take(self) -> Dict[str, float]:
        """`{"time/<phase>": seconds}` since the last `take`, every phase present (0.0 when it did not run)."""
        totals, self._totals = self._totals, dict.fromkeys(PHASES, 0.0)
        return {f"time/{name}": seconds for name, seconds in totals.items()}


def device_synchronizer(device: object) -> Optional[Callable[[], None]]:
    """`torch.cuda.synchronize` for a CUDA device; None on CPU, where the host wall time is the compute time."""
    import torch

    if getattr(device, "type", None) == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def breakdown(rows: Iterable[Dict[str, Any]], skip: float = 0.5) -> Dict[str, float]:
    """Mean milliseconds per phase over the step lines of metrics.jsonl after the first `skip` fraction (warm-up),
    plus `step` (step_time + data + logging) and `other` (the part of step_time in no phase). Empty without
    timed steps (a run from before the breakdown existed)."""
    steps = [row for row in rows if "time/forward" in row and "step_time" in row]
    steps = steps[int(len(steps) * skip):]
    if not steps:
        return {}
    mean = {name: 1e3 * sum(row[f"time/{name}"] for row in steps) / len(steps) for name in PHASES}
    step_time = 1e3 * sum(row["step_time"] for row in steps) / len(steps)
    in_step = sum(mean[name] for name in PHASES if name not in ("data", "logging"))
    return {**mean, "other": max(step_time - in_step, 0.0), "step": step_time + mean["data"] + mean["logging"]}
