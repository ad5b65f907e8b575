"""The train loop: epochs of sampler batches → `StepRunner.train_step` → metrics, checkpoints, ledger.

Knows no Ray: checkpoints and metrics leave through a `Reporter` that `framework.cluster` implements.

A checkpoint holds, besides DeepSpeed's state (weights, optimizer, LR scheduler), everything that makes a resumed
run continue exactly: the step, the sampler position (epoch, micro-batches consumed), the objective's state, the
skip counters, each rank's RNG states (`rank-state-rankNNN.pt`) and each rank's sample ledger
(`ledger-rankNNN.jsonl`: per step the epoch and the store rows that rank trained on, padding excluded).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Protocol, Tuple

import numpy as np
import torch

from framework.config import TrainConfig
from framework.errors import UserError
from framework.engine.batches import BatchBuilder, MicroBatch
from framework.engine.step import StepRunner
from framework.engine.timing import PhaseTimer, device_synchronizer

log = logging.getLogger(__name__)
STATE_FILE = "alignray_state.json"
LEDGER_FILE = "ledger-rank{rank:03d}.jsonl"
RANK_STATE_FILE = "rank-state-rank{rank:03d}.pt"


class Reporter(Protocol):
    def report(self, metrics: Dict[str, float], checkpoint_dir: Optional[str]) -> None: ...
    def scratch_dir(self, step: int) -> str: ...
    def restored_checkpoint(self) -> Optional[str]: ...
    def event(self, record: Dict[str, Any]) -> None: ...
    def stop_requested(self) -> bool: ...


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss."""


class TrainLoop:
    """Runs `max_steps` optimizer steps over epochs of the rank's sampler batches."""

    def __init__(self, runner: StepRunner, builder: BatchBuilder, store: Any, sampler: Any, train: TrainConfig,
                 reporter: Reporter, eval_batches: Optional[List[MicroBatch]] = None) -> None:
        self.runner, self.builder, self.store, self.sampler = runner, builder, store, sampler
        self.train, self.reporter, self.eval_batches = train, reporter, eval_batches or []
        self.seam = runner.seam
        self.step = 0
        self.nonfinite_in_row = 0
        self.skipped_steps = 0
        self.ledger: List[Dict[str, Any]] = []
        synchronize = device_synchronizer(self.seam.device) if train.sync_timing else None
        self.timer = runner.timer = PhaseTimer(synchronize)

    # -- data ------------------------------------------------------------------------------------------
    def micro_batches(self) -> Iterator[Tuple[List[MicroBatch], Dict[str, Any]]]:
        """Groups of `grad_accum` micro-batches, resuming from the sampler's saved position."""
        while True:
            state = self.sampler.state_dict()
            epoch, start = int(state["epoch"]), int(state["batches_consumed"])
            plan = self.sampler.plan(epoch)
            accum = self.train.grad_accum
            for first in range(start, len(plan), accum):
                group = plan[first : first + accum]
                # The epoch's last group may be short: fill it with all-padding micro-batches (zero weight) so
                # DeepSpeed's accumulation count holds and no row of the epoch is dropped.
                group += [group[-1]._replace(is_padding=[True] * len(group[-1].indices))] * (accum - len(group))
                built = [self._build(indices) for indices in group]
                self.sampler.load_state_dict({**state, "epoch": epoch, "batches_consumed": min(first + accum, len(plan))})
                yield built, {"epoch": epoch, "rows": [self._real(b) for b in group]}
            self.sampler.load_state_dict({**state, "epoch": epoch + 1, "batches_consumed": 0})

    def _build(self, batch: Any) -> MicroBatch:
        return self.builder.build(self.store.take(batch.indices), batch.is_padding)

    @staticmethod
    def _real(batch: Any) -> List[int]:
        return [int(r) for r, pad in zip(batch.indices, batch.is_padding) if not pad]

    # -- run -------------------------------------------------------------------------------------------
    def run(self) -> Dict[str, float]:
        self._maybe_restore()
        summary: Dict[str, float] = {}
        if self.train.eval_at_start and self.step == 0 and self.eval_batches:
            summary.update({f"{k}@start": v for k, v in self._evaluate().items()})
            self.reporter.report({"step": 0, **summary}, None)
        batches = self.micro_batches()
        if self._stop_requested():  # asked to stop while the workers were starting: nothing new to save
            return summary
        while self.step < self.train.max_steps:
            with self.timer.phase("data"):
                group, info = next(batches)
            started = time.perf_counter()
            self.runner.objective.set_step(self.step, self.train.max_steps)
            # Rank 0 reads the driver's stop request; it rides on the step's metrics all-reduce so that every
            # rank takes the same branch (a rank stopping alone would hang the others in their next collective).
            metrics = self.runner.train_step(group, {"stop": float(self.reporter.stop_requested())})
            stop_flag = metrics.pop("stop") > 0
            self._check_finite(metrics)
            self.step += 1
            self.ledger.append({"step": self.step, "epoch": info["epoch"], "rows": sum(info["rows"], []),
                                "applied": not metrics.get("nonfinite")})
            elapsed = time.perf_counter() - started
            metrics.update({"step": self.step, "epoch": info["epoch"], "lr": self.seam.lr(),
                            "step_time": elapsed, "tokens_per_s": metrics.get("tokens", 0.0) / max(elapsed, 1e-9),
                            "skipped_steps": self.skipped_steps, "wall_clock": time.time()})
            metrics.update(self.timer.take())  # time/logging: the previous step's report (this line is not written yet)
            checkpoint = None
            last = self.step == self.train.max_steps
            if self._periodic_eval_due(last):
                metrics.update(self._evaluate())
            stop = not last and stop_flag
            if last or (stop and self.train.checkpoint_on_interrupt) or (
                    self.train.checkpoint_every and self.step % self.train.checkpoint_every == 0):
                if last and self.train.eval_at_end and self.eval_batches:
                    end = self._evaluate()
                    summary.update({f"{k}@end": v for k, v in end.items()})
                    metrics.update(end)
                checkpoint = self._save()
            reported = time.perf_counter()
            self.reporter.report(metrics, checkpoint)
            if checkpoint is None:  # publishing a checkpoint is not logging
                self.timer.add("logging", time.perf_counter() - reported)
            if stop:
                self.reporter.event({"event": "interrupted", "step": self.step, "checkpointed": checkpoint is not None})
                log.warning("stop requested: stopped after step %d", self.step)
                break
        return summary

    def _stop_requested(self) -> bool:
        """Before the first step: rank 0 reads the driver's request, one all-reduce shares it (see `run`)."""
        flag = torch.tensor([1.0 if self.reporter.stop_requested() else 0.0], device=self.seam.device)
        return float(self.seam.all_reduce_sum(flag)[0]) > 0

    def _periodic_eval_due(self, last: bool) -> bool:
        """`train.eval_every`; the last step's evaluation is eval_at_end's when that is on (no second forward)."""
        every = self.train.eval_every
        return bool(self.eval_batches) and every > 0 and self.step % every == 0 and not (last and self.train.eval_at_end)

    def _evaluate(self) -> Dict[str, float]:
        return self.runner.evaluate(self.eval_batches)

    def _check_finite(self, metrics: Dict[str, float]) -> None:
        if not metrics.get("nonfinite"):
            self.nonfinite_in_row = 0
            return
        self.skipped_steps += 1
        self.nonfinite_in_row += 1
        log.warning("non-finite loss at step %d (%d in a row)", self.step + 1, self.nonfinite_in_row)
        if self.nonfinite_in_row >= self.train.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"loss was NaN/Inf for {self.nonfinite_in_row} consecutive steps (train.max_nonfinite_steps="
                f"{self.train.max_nonfinite_steps}); stopping without checkpointing. Lower train.lr or check the data."
            )

    # -- checkpoints -----------------------------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        """Shared by all ranks (the same on each); saved with DeepSpeed's client state and as JSON by rank 0."""
        return {
            "step": self.step, "sampler": self.sampler.state_dict(), "skipped_steps": self.skipped_steps,
            "nonfinite_in_row": self.nonfinite_in_row, "objective": self.runner.objective.state_dict(),
        }

    def _save(self) -> str:
        # Every rank checks its own (ZeRO) partition; the verdict is shared so all ranks stop together.
        bad = self.seam.all_reduce_sum(torch.tensor([0.0 if _weights_finite(self.runner.policy) else 1.0]))
        if float(bad[0]) > 0:
            raise NonFiniteLossError(f"policy weights are not finite at step {self.step}; refusing to checkpoint")
        directory = Path(self.reporter.scratch_dir(self.step))
        self.seam.save(str(directory), tag="model", client_state={"alignray": self._state()})
        rank = self.seam.rank
        # Per rank: DeepSpeed keeps client_state from rank 0 only, but RNG streams and ledgers differ by rank.
        torch.save({"rng": _rng_state()}, directory / RANK_STATE_FILE.format(rank=rank))
        with open(directory / LEDGER_FILE.format(rank=rank), "w") as f:
            for entry in self.ledger:
                f.write(json.dumps(entry) + "\n")
        if rank == 0:
            (directory / STATE_FILE).write_text(json.dumps({**self._state(), "world_size": self.seam.world_size}))
        self.seam.barrier()
        return str(directory)

    def _maybe_restore(self) -> None:
        directory = self.reporter.restored_checkpoint()
        if directory is None:
            return
        started = time.perf_counter()
        state = self.seam.load(directory).get("alignray", {})
        self.step = int(state.get("step", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_in_row = int(state.get("nonfinite_in_row", 0))
        self.sampler.load_state_dict(state["sampler"])
        self.runner.objective.load_state_dict(state.get("objective", {}))
        rank = self.seam.rank
        rank_state = Path(directory) / RANK_STATE_FILE.format(rank=rank)
        if not rank_state.exists():
            raise UserError(f"{rank_state} is missing: the checkpoint was written by a different number of workers",
                            "resume with the cluster.num_workers of the run that wrote it")
        _set_rng_state(torch.load(rank_state, weights_only=False)["rng"])
        ledger = Path(directory) / LEDGER_FILE.format(rank=rank)
        self.ledger = [json.loads(line) for line in ledger.read_text().splitlines() if line]
        seconds = time.perf_counter() - started
        self.reporter.event({"event": "restored", "step": self.step, "restore_seconds": round(seconds, 3),
                             "from": getattr(self.reporter, "restored_from", directory)})
        log.warning("resumed from %s at step %d (%.1f s)", directory, self.step, seconds)


def _weights_finite(model: Any) -> bool:
    """This rank's view: its ZeRO-3 partition (`ds_tensor`) or the full parameters."""
    for param in model.parameters():
        data = getattr(param, "ds_tensor", None)
        data = param.data if data is None or data.numel() == 0 else data
        if data.numel() and not torch.isfinite(data).all():
            return False
    return True


def _rng_state() -> Dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
