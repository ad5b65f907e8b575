"""The objective contract: per-sequence statistics in, per-example losses and detached metrics out.

Objectives are pure functions of `SequenceStats` (policy and, optionally, reference) plus the batch's
annotations. They never touch models, data loading or `torch.distributed`; the one exception is a
cross-rank statistic the math needs (KTO's reference point, BCO's running reward shift), which they get
through `self.sync_mean`, a hook the trainer installs.
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
}


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


def _identity_mean(value: Tensor) -> Tensor:
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
        # The trainer replaces this with a mean over all ranks (and accumulation micro-batches).
        self.sync_mean: Callable[[Tensor], Tensor] = _identity_mean
        # Stateful objectives (BCO) update their running statistics only while training.
        self.training = True

    def train(self, mode: bool = True) -> "Objective":
        """Switch running-state updates on (training) or off (evaluation), like `nn.Module.train`."""
        self.training = bool(mode)
        return self

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
