"""Golden loss: a 1-worker alignray DPO run equals a plain PyTorch loop written here, step for step.

The loop below uses no Ray, no DeepSpeed and no framework.engine / framework.objectives code: transformers'
`from_pretrained`, a frozen copy as reference, summed response log-probs from one right-padded forward,
−logsigmoid(β·margin) averaged over the step's real pairs, AdamW, the linear-warmup/cosine LR factor and
global-norm clipping at 1.0. Only the data order comes from alignray (`EpochSampler`), because that order is
the contract. 50 pairs in micro-batches of 4 give 13 steps per epoch, the last with 2 padding slots, so the
20 steps cross an epoch boundary and a step with fewer real pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import compose

pytestmark = pytest.mark.slow
STEPS, ROWS, MICRO_BATCH = 20, 50, 4
LR, WARMUP, BETA, SEED = 1e-3, 3, 0.1, 0
# Gradient norms here run 1.1-1.9: at 1.0 every step would clip, and clipping to a fixed norm would hide a
# wrong gradient scale (a ×2 bug moved the losses by 1e-7); at 1.4 some steps clip and some do not.
CLIP = 1.4
MAX_LENGTH, MAX_PROMPT_LENGTH = 128, 64


def warmup_cosine(step: int, warmup: int = WARMUP, total: int = STEPS, floor: float = 0.1) -> float:
    """LR factor of the optimizer step with 0-based index `step`: linear warmup, cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def padded_pairs(rows: Dict[str, list], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, response_mask) [2B, T]: chosen then rejected of each row, right-padded; the
    prompt keeps its end and the response its start within the length budgets."""
    sequences = []
    for prompt, responses in zip(rows["prompt_ids"], rows["response_ids"]):
        prompt = prompt[-MAX_PROMPT_LENGTH:]
        sequences += [(prompt, response[: MAX_LENGTH - len(prompt)]) for response in responses]
    width = max(len(p) + len(r) for p, r in sequences)
    input_ids = torch.full((len(sequences), width), pad_id)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width))
    for i, (prompt, response) in enumerate(sequences):
        input_ids[i, : len(prompt) + len(response)] = torch.tensor(prompt + response)
        attention_mask[i, : len(prompt) + len(response)] = 1
        response_mask[i, len(prompt) : len(prompt) + len(response)] = 1.0
    return input_ids, attention_mask, response_mask


def response_logps(model: torch.nn.Module, batch: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """[B, 2] summed log-probs of chosen and rejected responses."""
    input_ids, attention_mask, response_mask = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    per_token = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (per_token * response_mask[:, 1:]).sum(-1).view(-1, 2)


def sampler_rows(store_dir: Path) -> Iterator[Dict[str, list]]:
    """The real rows of each step in alignray's order (1 rank, seeded shuffle, length-grouped), epoch after epoch."""
    from framework.store import EpochSampler, open_store

    store = open_store(str(store_dir))
    sampler = EpochSampler(store.num_rows, rank=0, world_size=1, batch_size=MICRO_BATCH, seed=SEED,
                           lengths=store.token_lengths())
    for batch in sampler.iter_batches():
        yield store.take([i for i, pad in zip(batch.indices, batch.is_padding) if not pad]).to_pydict()


def plain_dpo_losses(model_dir: str, store_dir: Path, steps: int = STEPS) -> List[float]:
    """The first `steps` DPO losses of a plain single-process PyTorch loop."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    losses = []
    for _, rows in zip(range(steps), sampler_rows(store_dir)):
        batch = padded_pairs(rows, pad_id)
        with torch.no_grad():
            reference_logps = response_logps(reference, batch)
        rho = response_logps(policy, batch) - reference_logps
        loss = -F.logsigmoid(BETA * (rho[:, 0] - rho[:, 1])).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def alignray_run(tmp_path_factory, tiny_model_dir, ray_local) -> Dict:
    from framework.run import train

    out = tmp_path_factory.mktemp("golden") / "run"
    cfg = compose([f"output_dir={out}", f"model.path={tiny_model_dir}", "objective=dpo", f"objective.beta={BETA}",
                   "deepspeed=zero2", "deepspeed.dtype=fp32", f"deepspeed.grad_clip={CLIP}", "cluster.num_workers=1",
                   f"data.demo_train_rows={ROWS}", "data.demo_eval_rows=8", f"train.micro_batch_size={MICRO_BATCH}",
                   "train.grad_accum=1", f"train.max_steps={STEPS}", f"train.warmup_steps={WARMUP}", f"train.lr={LR}",
                   "train.weight_decay=0.0", f"train.seed={SEED}", "train.length_grouping=true",
                   "train.eval_at_start=false", "train.export=false"])
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [r["loss"] for r in rows if "loss" in r], "store": out / "store" / "train"}


def test_first_20_losses_equal_plain_pytorch(alignray_run, tiny_model_dir):
    from framework.store import open_store

    assert open_store(str(alignray_run["store"])).num_rows == ROWS  # 13 steps per epoch, the last one short
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (cluster.cpus_per_worker=1): same reduction order in matmuls
    try:
        expected = plain_dpo_losses(tiny_model_dir, alignray_run["store"])
    finally:
        torch.set_num_threads(threads)
    assert len(alignray_run["losses"]) == STEPS
    assert abs(expected[0] - math.log(2)) < 1e-6  # policy == reference at step 1
    assert sum(expected[-5:]) / 5 < expected[0] - 0.05  # the loop really trains
    assert alignray_run["losses"] == pytest.approx(expected, rel=0, abs=1e-5)
