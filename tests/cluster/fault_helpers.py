"""Shared pieces of the fault-tolerance, resume and non-finite tests: small real runs and ledger checks.

Every run here is a real TorchTrainer (2 workers, DeepSpeed ZeRO-2, CPU) on 20 demo pairs with a global batch
of 8 (2 ranks x 4): 3 steps per epoch, the last one with 4 padding slots, so epochs and checkpoints do not
line up and a resume has to land mid-epoch.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from tests.conftest import compose

ROWS, WORKERS, MICRO, STEPS = 20, 2, 4, 10
STEPS_PER_EPOCH = -(-ROWS // (WORKERS * MICRO))
BASE = [f"data.demo_train_rows={ROWS}", "data.demo_eval_rows=8", f"train.max_steps={STEPS}", "train.warmup_steps=3",
        "train.lr=3e-3", "train.eval_at_start=false", "train.eval_at_end=false",
        "train.export=false", "train.checkpoint_every=2", "train.keep_checkpoints=3", "deepspeed=zero2",
        f"cluster.num_workers={WORKERS}", f"train.micro_batch_size={MICRO}"]
_REFERENCE: Dict[str, Any] = {}


def run_train(output: Path, tiny: str, overrides: List[str]) -> Dict[str, Any]:
    """`alignray train` in-process (same code path as the CLI after Hydra): returns the run summary."""
    from framework.run import train

    return train(compose(BASE + [f"output_dir={output}", f"model.path={tiny}", *overrides]))


def metric_rows(output: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses_by_step(output: Path) -> Dict[int, float]:
    """Step -> loss; a step replayed after a restore appears twice in metrics.jsonl and the later line wins."""
    return {int(r["step"]): r["loss"] for r in metric_rows(output) if "loss" in r}


def reference_run(root: Path, tiny: str) -> Dict[str, Any]:
    """The uninterrupted run every restored run is compared with (computed once per test session)."""
    if "output" not in _REFERENCE:
        output = root / "uninterrupted"
        started = time.time()
        summary = run_train(output, tiny, [])
        _REFERENCE.update(output=output, summary=summary, started=started)
    return _REFERENCE


def storage_runs(output: Path) -> List[Path]:
    return sorted((output / "ray").glob("train-*"))


def read_ledgers(checkpoint: Path) -> List[List[Dict[str, Any]]]:
    return [[json.loads(line) for line in (checkpoint / f"ledger-rank{rank:03d}.jsonl").read_text().splitlines()]
            for rank in range(WORKERS)]


def assert_exactly_once(ledgers: List[List[Dict[str, Any]]], steps: int) -> None:
    """Each rank has one entry per step 1..steps; per epoch, the rows of all ranks are each trained once
    (a complete epoch covers all ROWS rows, a partial one repeats none)."""
    for entries in ledgers:
        assert [e["step"] for e in entries] == list(range(1, steps + 1))
    for epoch in range(-(-steps // STEPS_PER_EPOCH)):
        rows = sorted(r for entries in ledgers for e in entries if e["epoch"] == epoch for r in e["rows"])
        assert len(rows) == len(set(rows)), f"epoch {epoch}: a row was trained twice"
        complete = (epoch + 1) * STEPS_PER_EPOCH <= steps
        if complete:
            assert rows == list(range(ROWS)), f"epoch {epoch}: rows skipped or repeated"


def worker_pids() -> List[int]:
    """Pids of the live Ray Train worker actors (the state API of the session's Ray)."""
    import ray
    from ray.util.state import list_actors

    # This session's GCS address, never "auto": other Ray instances may run on the machine.
    actors = list_actors(address=ray.get_runtime_context().gcs_address, timeout=30,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return sorted(int(a.pid) for a in actors)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Background:
    """Runs `fn` in a thread (the training call blocks); `join` returns its result or re-raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            self.error = err

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("training did not finish in time")
        if self.error is not None:
            raise self.error
        return self.result


def park_in_publish(step: int, release: Path) -> Dict[str, str]:
    """The documented test hook: every rank parks inside the publish of `step` until `release` exists."""
    return {"ALIGNRAY_TEST_SLOW_PUBLISH": f"{step}:{release}"}


def all_ranks_parked(release: Path) -> bool:
    return all(Path(f"{release}.rank{rank}.waiting").exists() for rank in range(WORKERS))
