"""The objective contract: per-sequence statistics in, per-example losses and detached metrics out.

Objectives are pure functions of `SequenceStats` (policy and, optionally, reference) plus the batch's
annotations. They never touch models, data loading or `torch.distributed`. Statistics taken across examples
come in two kinds:

* gradient-free ones over the whole optimizer step (KTO's reference point, the token-mean normaliser):
  the objective declares them in `window_stats`; the trainer sums them over every micro-batch of the step
  on every rank before any loss and passes the means back as batch["window_means"];
* running state that needs the policy forward (BCO's reward shift): the objective reduces its sums across
  ranks through `self.sync_sum`, a hook the trainer installs.

Both count real examples only: the trainer passes batch["weights"] [B] (0 for the padding rows that
equalise ranks) and batch["lengths"] [B, K] (response token counts, known before any forward).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Type

import torch

Tensor = torch.Tensor
# "sft" is one demonstration per example (K=1, no annotation); a pairwise store's chosen column serves too.
FEEDBACK_KINDS = ("pairwise", "listwise", "binary", "multi", "sft")

# Every string an objective may list in `requires`, and what the trainer must then supply.
REQUIREMENTS = {
    "prompt_logps": "SequenceStats.prompt_logps / prompt_lengths [B, K] for policy and reference (DOVE joint mode)",
    "rewards": "SequenceStats.rewards [B, K] from a scalar reward head (bt_reward); logps may then be zeros",
    "mismatched": (
        'batch["mismatched_policy"] and batch["mismatched_reference"]: SequenceStats [B, 1] of each prompt with '
        "a completion taken from another example (KTO's reference point); no gradient needed"
    ),
    "aligned_logps": 'batch["aligned_logps"] [B, M]: per-token mean log-probs of y under M aligned LMs (PoFT)',
    "self_samples": (
        "columns are [human negative, K self-samples from the initial policy]; optional "
        'batch["mask"] [B, 1+K] marks valid columns (D2O)'
    ),
    "prompt_weights": 'batch["prompt_weights"] [B, M]: per-prompt objective weights on the simplex (PRO\'s adapter, a store column)',
    "context_prompts": "the prompt ids carry the row's objective weights as a text line (the store's context_prompt_ids)",
}

# Reference inputs a store cannot hold (it stores response log-probs only): they need a live reference model.
LIVE_REFERENCE_INPUTS = ("mismatched", "self_samples", "prompt_logps", "context_prompts")


@dataclasses.dataclass
class SequenceStats:
    """Per-sequence log-prob statistics for a batch of B examples with K responses each.

    `logps[b, k]` is the sum of response-token log-probs, `lengths[b, k]` the number of response tokens.
    Optional fields are filled only when an objective asks for them.
    """

    logps: Tensor
    lengths: Tensor
    prompt_logps: Optional[Tensor] = None  # [B, K] sum over prompt tokens (DOVE joint mode)
    prompt_lengths: Optional[Tensor] = None
    rewards: Optional[Tensor] = None  # [B, K] scalar-head outputs (reward models)

    @property
    def mean_logps(self) -> Tensor:
        """Per-token mean log-prob; empty responses count as length 1 to avoid 0/0."""
        return self.logps / self.lengths.clamp(min=1).to(self.logps.dtype)

    def column(self, k: int) -> "SequenceStats":
        """The k-th response of every example, kept 2-D ([B, 1])."""
        pick = lambda t: None if t is None else t[:, k : k + 1]  # noqa: E731
        return SequenceStats(*(pick(getattr(self, f.name)) for f in dataclasses.fields(self)))


@dataclasses.dataclass
class ObjectiveOutput:
    """`losses`: [B] per-example losses, not yet averaged. `metrics`: detached scalars or [B] tensors."""

    losses: Tensor
    metrics: Dict[str, Tensor] = dataclasses.field(default_factory=dict)


def _identity_sum(value: Tensor) -> Tensor:
    return value


class Objective:
    """Base class. Subclasses set `feedback`, `needs_reference`, `requires` and implement `loss`.

    Constructor keyword arguments are the objective's hyperparameters; `conf/objective/<name>.yaml` holds
    the same names, and the config tests bind those keys against the constructor signature.

    Metrics are detached. A [B] metric is reduced by the trainer with a NaN-ignoring mean over the global
    batch; NaN marks "does not apply to this example" (e.g. `rewards/chosen` of an undesirable KTO example).
    A 0-d metric is a batch-level statistic (e.g. KTO's `kl`), averaged over steps.
    """

    name: ClassVar[str] = ""
    feedback: ClassVar[str] = "pairwise"
    needs_reference: ClassVar[bool] = True
    # Extra inputs the trainer must supply, each a key of REQUIREMENTS. An instance may narrow it
    # (DOVE needs prompt log-probs only in joint mode), so the trainer reads `obj.requires`.
    requires: ClassVar[tuple] = ()

    def __init__(self) -> None:
        # The trainer replaces this with an element-wise sum over all ranks (one all-reduce per call).
        self.sync_sum: Callable[[Tensor], Tensor] = _identity_sum
        # ... and this with a concatenation over ranks, in rank order, along dim 0 (SPA's margin buffer).
        self.sync_gather: Callable[[Tensor], Tensor] = _identity_sum
        # Stateful objectives (BCO) update their running statistics only while training.
        self.training = True

    def train(self, mode: bool = True) -> "Objective":
        """Switch running-state updates on (training) or off (evaluation), like `nn.Module.train`."""
        self.training = bool(mode)
        return self

    def set_step(self, step: int, total_steps: int) -> None:
        """Called by the trainer before each optimizer step (0-based) of `total_steps`; objectives with a
        schedule over the run (SPA's α) override it."""
        del step, total_steps

    def live_reference_inputs(self) -> List[str]:
        """The inputs of `requires` that stored reference log-probs cannot supply (empty: a store may serve)."""
        return [r for r in self.requires if r in LIVE_REFERENCE_INPUTS] if self.needs_reference else []

    def window_stats(self, batch: Mapping[str, Any]) -> Dict[str, Tensor]:
        """Gradient-free statistics the loss needs over the whole optimizer step, as name → [Σ w·x, Σ w]
        over this micro-batch (w = batch["weights"]). They may read annotations and batch["lengths"], never
        the policy's log-probs (the trainer computes them before any forward with gradient)."""
        del batch
        return {}

    def window_mean(self, name: str, batch: Mapping[str, Any], policy: SequenceStats) -> Tensor:
        """The step-wide mean of `window_stats` entry `name` from batch["window_means"]. Without it (a direct
        call, or an objective used inside another that does not forward its `window_stats`) the mean is taken
        over this batch, all examples weighing 1 unless batch["weights"] says otherwise."""
        means = batch.get("window_means") or {}
        if name in means:
            return means[name]
        defaults = {"weights": torch.ones_like(policy.logps[:, 0]), "lengths": policy.lengths}
        return ratio(*self.window_stats({**defaults, **batch})[name])

    def loss(self, policy: SequenceStats, reference: Optional[SequenceStats], batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Per-example losses [B] and detached metrics; never averaged across examples here."""
        raise NotImplementedError

    # Objectives with running state (BCO's reward shift) override these so checkpoints carry it.
    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state

    def hparams(self) -> Dict[str, Any]:
        """The constructor arguments this objective was built with (the keys of its YAML, minus `name`)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}


def ratio(total: Tensor, count: Tensor) -> Tensor:
    """total / count, and 0 when nothing was counted (a step of padding rows only)."""
    return total / count if float(count) > 0 else torch.zeros_like(total)


_REGISTRY: Dict[str, Type[Objective]] = {}


def register_objective(name: str) -> Callable[[Type[Objective]], Type[Objective]]:
    """Class decorator: make `cls` buildable as `build_objective(name, ...)`."""

    def wrap(cls: Type[Objective]) -> Type[Objective]:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice ({_REGISTRY[name].__module__}, {cls.__module__})")
        unknown = set(cls.requires) - set(REQUIREMENTS)
        if unknown:
            raise ValueError(f"objective {name!r} requires undocumented inputs {sorted(unknown)}; add them to REQUIREMENTS")
        if cls.feedback not in FEEDBACK_KINDS:
            raise ValueError(f"objective {name!r}: feedback must be one of {FEEDBACK_KINDS}, got {cls.feedback!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_objectives() -> List[str]:
    """Sorted names of every registered objective."""
    return sorted(_REGISTRY)


def objective_class(name: str) -> Type[Objective]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown objective {name!r}; registered: {', '.join(registered_objectives())}")
    return _REGISTRY[name]


def build_objective(name: str, **hparams: Any) -> Objective:
    """Instantiate a registered objective with its hyperparameters."""
    return objective_class(name)(**hparams)
