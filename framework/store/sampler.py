"""`EpochSampler`: each rank's micro-batches of row indices for one epoch, deterministic and resumable.

The plan of an epoch is a pure function of (seed, epoch, num_rows, world_size, batch_size, lengths), so
every rank computes the same global plan and takes its own slice; no communication is needed.

Global plan: the rows in a seeded permutation (or in order without shuffle) are cut into global steps of
`world_size * batch_size` rows; position p of a step goes to rank p % world_size. With `lengths`, the
permutation is first cut into groups of `group_steps` steps, each group is sorted by length (longest
first) so that a micro-batch holds rows of similar length, and the order of the steps is shuffled again
so long and short steps interleave.

Remainder: when num_rows is not a multiple of world_size * batch_size, the last step is filled up to full
size with repeats of rows from the start of the permutation, and those slots are flagged as padding
(`Batch.is_padding`, `padding(epoch)`). Padding slots must get zero loss weight. Then every rank has the
same number of equally sized micro-batches (ZeRO needs equal step counts) and the non-padding slots of
all ranks together are a permutation of range(num_rows): every row exactly once per epoch.

Resume: the position is (epoch, batches consumed in it). `iter_batches` advances it as it hands out
batches; a checkpoint of `state_dict()` after a step resumes at the next batch, never skipping or repeating.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

import numpy as np

from framework.store.errors import StoreError


class Batch(NamedTuple):
    """One micro-batch of this rank: row indices and, per slot, whether it is a padding repeat."""

    epoch: int
    step: int
    indices: List[int]
    is_padding: List[bool]


class EpochSampler:
    """Per-rank, equal-sized, disjoint micro-batches; seeded per-epoch shuffle; optional length grouping."""

    def __init__(self, num_rows: int, *, rank: int, world_size: int, batch_size: int, seed: int,
                 shuffle: bool = True, lengths: Optional[np.ndarray] = None, group_steps: int = 64) -> None:
        if num_rows < 1 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler arguments: num_rows={num_rows} rank={rank} world_size={world_size} "
                             f"batch_size={batch_size}")
        if lengths is not None and len(lengths) != num_rows:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_rows} rows")
        self.num_rows, self.rank, self.world_size, self.batch_size = num_rows, rank, world_size, batch_size
        self.seed, self.shuffle, self.group_steps = seed, shuffle, group_steps
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.epoch, self.batches_consumed = 0, 0

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches each rank gets per epoch (the same on every rank)."""
        return math.ceil(self.num_rows / self.global_batch)

    @property
    def padding_per_epoch(self) -> int:
        return self.batches_per_epoch * self.global_batch - self.num_rows

    def _global_plan(self, epoch: int) -> tuple:
        """([steps, global_batch] row indices, same-shaped padding mask) for the whole world."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_rows) if self.shuffle else np.arange(self.num_rows)
        if self.lengths is not None:
            group = self.global_batch * self.group_steps
            order = np.concatenate([chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                                    for chunk in np.split(order, range(group, self.num_rows, group))])
        pad = self.padding_per_epoch
        filled = np.concatenate([order, np.resize(order, pad)]) if pad else order
        mask = np.zeros(filled.size, dtype=bool)
        mask[self.num_rows:] = True
        steps, flags = filled.reshape(-1, self.global_batch), mask.reshape(-1, self.global_batch)
        if self.lengths is not None and self.shuffle:
            step_order = rng.permutation(len(steps))
            steps, flags = steps[step_order], flags[step_order]
        return steps, flags

    def plan(self, epoch: int) -> List[Batch]:
        """This rank's micro-batches for `epoch`, padding flags included."""
        steps, flags = self._global_plan(epoch)
        mine, my_flags = steps[:, self.rank::self.world_size], flags[:, self.rank::self.world_size]
        return [Batch(epoch, step, mine[step].tolist(), my_flags[step].tolist()) for step in range(len(steps))]

    def batches(self, epoch: int) -> List[List[int]]:
        """This rank's micro-batches of row indices for `epoch` (padding slots included; see `padding`)."""
        return [batch.indices for batch in self.plan(epoch)]

    def padding(self, epoch: int) -> List[List[bool]]:
        """Same shape as `batches(epoch)`: True where the slot repeats a row only to even out the ranks."""
        return [batch.is_padding for batch in self.plan(epoch)]

    def iter_batches(self, epochs: Optional[int] = None) -> Iterator[Batch]:
        """From the current position on, advancing it as batches are handed out; stops after epoch `epochs-1`."""
        while epochs is None or self.epoch < epochs:
            plan = self.plan(self.epoch)
            while self.batches_consumed < len(plan):
                batch = plan[self.batches_consumed]
                self.batches_consumed += 1
                yield batch
            self.epoch, self.batches_consumed = self.epoch + 1, 0

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed, "num_rows": self.num_rows,
                "world_size": self.world_size, "batch_size": self.batch_size, "seed": self.seed,
                "shuffle": self.shuffle, "length_grouped": self.lengths is not None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the position; the plan-defining settings must match or the position would mean other rows."""
        for key in ("num_rows", "world_size", "batch_size", "seed", "shuffle", "length_grouped"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise StoreError(f"sampler state was saved with {key}={state[key]!r}, this run has {mine!r}; "
                                 "resuming would read different rows", "resume with the data, workers, micro batch "
                                 "size, seed and length grouping of the run that wrote the checkpoint")
        self.epoch, self.batches_consumed = int(state["epoch"]), int(state["batches_consumed"])
