"""Store rows → model inputs and objective annotations for one micro-batch.

Knows the store's column names and each feedback kind's layout; knows nothing about DeepSpeed or Ray.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import torch

from framework.errors import UserError
from framework.model.batching import PADDED, Layout, PackedBatch, TokenBatch, build_tokens


@dataclasses.dataclass
class MicroBatch:
    tokens: "TokenBatch | PackedBatch"
    annotations: Dict[str, Any]  # scores, mask, labels, ... as the objective contract names them
    weights: torch.Tensor  # [B] 1 for examples that count, 0 for padding rows that equalise ranks
    stored_reference: Optional[Dict[str, torch.Tensor]] = None  # logps/lengths [B, K] from the store
    row_ids: List[str] = dataclasses.field(default_factory=list)


def _padded(rows: Sequence[Optional[Sequence[Any]]], k: int, fill: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([(list(r or []) + [fill] * k)[:k] for r in rows], dtype=dtype)


class BatchBuilder:
    """Turns a pyarrow table of store rows into a `MicroBatch` laid out for one objective family.

    - pairwise / listwise: all K responses; listwise gets `scores` (list order when the store has none).
    - binary: the one completion and `labels`; with `self_samples` (D2O) the completion is followed by the
      stored self-samples.
    - multi: the K = 2 responses and `objective_scores` [B, 2, M] with `objective_names` (the same in every row),
      plus `overall_scores` [B, 2] when every row carries the overall human label (`scores`).
    - sft: one response per row — chosen (pairwise), best-scored (ranked) or the completion of a desirable
      row (binary: undesirable rows get weight 0, so they are counted out, not silently dropped).
    """

    def __init__(self, pad_id: int, max_length: int, max_prompt_length: int, feedback: str,
                 use_stored_reference: bool, requires: Sequence[str] = (), use_udm_weights: bool = False,
                 layout: Layout = PADDED) -> None:
        self.pad_id, self.max_length, self.max_prompt_length = pad_id, max_length, max_prompt_length
        # A scalar reward head reads each row's last token: reward models keep one padded row per sequence.
        self.layout = PADDED if "rewards" in requires else layout
        self.feedback, self.requires = feedback, tuple(requires)
        self.use_stored_reference = use_stored_reference
        self.use_udm_weights = use_udm_weights  # BCO with data.udm=true: a store may hold them from an earlier run

    def build(self, table: Any, padding: Sequence[bool]) -> MicroBatch:
        cols = table.to_pydict()
        weights = torch.tensor([0.0 if pad else 1.0 for pad in padding])
        responses, keep = self._responses(cols, weights)
        response_prompts = cols.get("response_prompt_ids")
        if response_prompts is None or all(p is None for p in response_prompts) or self.feedback == "sft":
            response_prompts = None
        prompt_ids = cols["prompt_ids"]
        if "context_prompts" in self.requires:
            prompt_ids = _required_column(cols, "context_prompt_ids")
        tokens = build_tokens(prompt_ids, responses, layout=self.layout, pad_id=self.pad_id, max_length=self.max_length,
                              max_prompt_length=self.max_prompt_length, response_prompts=response_prompts)
        k = tokens.num_responses
        annotations: Dict[str, Any] = {"mask": tokens.valid}
        if self.feedback == "listwise":
            scores = cols.get("scores") or [None] * len(responses)
            annotations["scores"] = torch.tensor(
                [(list(s) if s is not None else [float(len(r) - i) for i in range(len(r))]) + [0.0] * (k - len(r))
                 for s, r in zip(scores, responses)], dtype=torch.float64)
        if self.feedback == "multi":
            annotations.update(_objective_annotations(cols))
        if cols.get("label") is not None and any(v is not None for v in cols["label"]):
            annotations["labels"] = torch.tensor([bool(v) for v in cols["label"]])
        if "aligned_logps" in self.requires:
            annotations["aligned_logps"] = torch.tensor([row[keep[i]] for i, row in enumerate(cols["aligned_logps"])],
                                                        dtype=torch.float64)
        if "prompt_weights" in self.requires:
            annotations["prompt_weights"] = torch.tensor(_required_column(cols, "prompt_weights"), dtype=torch.float64)
        if self.use_udm_weights:
            if cols.get("udm_weights") is None:
                raise UserError("data.udm=true but the store has no udm_weights column: run `alignray store add-udm-weights`")
            annotations["udm_weights"] = torch.tensor(cols["udm_weights"], dtype=torch.float64)
        stored = None
        if self.use_stored_reference:
            ref_logps, ref_lengths = cols["ref_logps"], cols["ref_lengths"]
            if self.feedback == "sft":
                ref_logps = [[row[keep[i]]] for i, row in enumerate(ref_logps)]
                ref_lengths = [[row[keep[i]]] for i, row in enumerate(ref_lengths)]
            stored = {"logps": _padded(ref_logps, k, 0.0, torch.float32),
                      "lengths": _padded(ref_lengths, k, 0, torch.float32)}
        return MicroBatch(tokens, annotations, weights, stored, list(cols.get("row_id") or []))

    def _responses(self, cols: Dict[str, List[Any]], weights: torch.Tensor) -> tuple:
        """Per row the responses to forward, and for sft the index of the one kept."""
        responses = cols["response_ids"]
        if self.feedback == "binary" and "self_samples" in self.requires:
            samples = cols.get("self_sample_ids")
            if samples is None:
                raise UserError("this objective needs self-samples in the store: run `alignray store add-samples`")
            return [list(r[:1]) + list(s or []) for r, s in zip(responses, samples)], None
        if self.feedback != "sft":
            return responses, None
        keep = []
        for i, row in enumerate(responses):
            scores, label = (cols.get("scores") or [None] * len(responses))[i], (cols.get("label") or [None] * len(responses))[i]
            keep.append(max(range(len(row)), key=lambda j: scores[j]) if scores else 0)
            if label is False:
                weights[i] = 0.0
        return [[row[j]] for row, j in zip(responses, keep)], keep


def _required_column(cols: Dict[str, List[Any]], name: str) -> List[Any]:
    values = cols.get(name)
    if values is None or any(v is None for v in values):
        raise UserError(f"this objective needs the store column {name!r}, which this store lacks",
                        "objective=pro adds it (prompt weights from the orchestrator adapter) before training")
    return values


def _objective_annotations(cols: Dict[str, List[Any]]) -> Dict[str, Any]:
    """Multi-objective scores [B, K, M] and the objective names, which every row of a batch must share."""
    names, scores = cols.get("objective_names"), cols.get("objective_scores")
    if not names or scores is None or any(s is None for s in scores):
        raise UserError("this objective needs multi-objective rows (objective_scores): build the store with --kind multi")
    if any(list(n) != list(names[0]) for n in names):
        raise UserError(f"rows of one batch name different objectives: {list(names[0])} vs "
                         f"{next(list(n) for n in names if list(n) != list(names[0]))}")
    out = {"objective_scores": torch.tensor(scores, dtype=torch.float64), "objective_names": list(names[0])}
    overall = cols.get("scores")
    if overall is not None and all(s is not None for s in overall):  # the overall human label, for evaluation
        out["overall_scores"] = torch.tensor(overall, dtype=torch.float64)
    return out
