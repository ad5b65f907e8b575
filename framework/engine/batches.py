"""Store rows → model inputs and objective annotations for one micro-batch.

Knows the store's column names and the objective's needs; knows nothing about DeepSpeed or Ray.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import torch

from framework.model.batching import TokenBatch, collate


@dataclasses.dataclass
class MicroBatch:
    tokens: TokenBatch
    annotations: Dict[str, Any]  # scores, mask, labels, ... as the objective contract names them
    weights: torch.Tensor  # [B] 1 for real examples, 0 for padding rows that equalise ranks
    stored_reference: Optional[Dict[str, torch.Tensor]] = None  # logps/lengths [B, K] from the store
    row_ids: List[str] = dataclasses.field(default_factory=list)


class BatchBuilder:
    """Turns a pyarrow table of store rows into a `MicroBatch`."""

    def __init__(self, pad_id: int, max_length: int, max_prompt_length: int, feedback: str, use_stored_reference: bool):
        self.pad_id, self.max_length, self.max_prompt_length = pad_id, max_length, max_prompt_length
        self.feedback = feedback
        self.use_stored_reference = use_stored_reference

    def build(self, table: Any, padding: Sequence[bool]) -> MicroBatch:
        cols = table.to_pydict()
        responses = cols["response_ids"]
        response_prompts = cols.get("response_prompt_ids")
        if response_prompts is not None and all(p is None for p in response_prompts):
            response_prompts = None
        tokens = collate(
            cols["prompt_ids"], responses, pad_id=self.pad_id, max_length=self.max_length,
            max_prompt_length=self.max_prompt_length, response_prompts=response_prompts,
        )
        annotations: Dict[str, Any] = {"mask": tokens.valid}
        k = tokens.num_responses
        if cols.get("scores") is not None and any(s is not None for s in cols["scores"]):
            annotations["scores"] = torch.tensor(
                [(list(s or []) + [0.0] * k)[:k] for s in cols["scores"]], dtype=torch.float64
            )
        if cols.get("label") is not None and any(v is not None for v in cols["label"]):
            annotations["labels"] = torch.tensor([bool(v) for v in cols["label"]])
        stored = None
        if self.use_stored_reference:
            stored = {
                "logps": torch.tensor([(list(v) + [0.0] * k)[:k] for v in cols["ref_logps"]], dtype=torch.float32),
                "lengths": torch.tensor([(list(v) + [0] * k)[:k] for v in cols["ref_lengths"]], dtype=torch.float32),
            }
        weights = torch.tensor([0.0 if pad else 1.0 for pad in padding])
        return MicroBatch(tokens, annotations, weights, stored, list(cols.get("row_id") or []))
