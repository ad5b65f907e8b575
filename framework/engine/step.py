"""One training step: forwards, objective, globally normalised loss, DeepSpeed backward/step, metrics."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from framework.engine import ranking, sequence_parallel
from framework.engine.batches import MicroBatch
from framework.engine.multi import combined_loss
from framework.engine.timing import PhaseTimer
from framework.model.batching import PADDED, Layout, PackedBatch, TokenBatch, build_tokens
from framework.model.logprobs import DEFAULT_TILE_ABOVE, sequence_logps, sequence_rewards
from framework.objectives import Objective, SequenceStats
from framework.objectives._multi import GradientCombinedObjective, objective_names
from framework.objectives.base import ratio


def stats(model: Any, tokens: "TokenBatch | PackedBatch", with_prompt: bool = False, reward: bool = False,
          tile_above: int = DEFAULT_TILE_ABOVE) -> SequenceStats:
    """Policy/reference statistics; for a reward model (scalar head) the per-sequence `rewards` instead."""
    if reward:
        return SequenceStats(**sequence_rewards(model, tokens))
    sp = sequence_parallel.active()
    if sp is not None:  # every forward of the process goes through Ulysses once it is installed
        return SequenceStats(**sequence_parallel.sequence_logps(model, tokens, sp, with_prompt, tile_above))
    return SequenceStats(**sequence_logps(model, tokens, with_prompt=with_prompt, tile_above=tile_above))


def response_lengths(tokens: "TokenBatch | PackedBatch") -> torch.Tensor:
    """[B, K] response token counts, counted as `sequence_logps` does (position 0 predicts nothing)."""
    return tokens.response_lengths()


def mismatched_tokens(batch: MicroBatch, pad_id: int, max_length: int, max_prompt_length: int,
                      layout: Layout = PADDED) -> "TokenBatch | PackedBatch":
    """KTO's mismatched completions: example i's prompt with example (i+1)'s response (a batch of 1 is invalid)."""
    tokens = batch.tokens
    if tokens.num_examples < 2:
        raise ValueError("this objective needs micro_batch_size >= 2 (mismatched completions come from the batch)")
    prompts, responses = [], []
    for i in range(tokens.num_examples):
        prompts.append(tokens.sequence(i, 0)[0])
        responses.append([tokens.sequence((i + 1) % tokens.num_examples, 0)[1]])
    return build_tokens(prompts, responses, layout=layout, pad_id=pad_id, max_length=max_length,
                        max_prompt_length=max_prompt_length)


class StepRunner:
    """Runs the forwards and the objective for micro-batches; the seam does the distributed parts."""

    def __init__(self, seam: Any, policy: Any, reference: Optional[Any], objective: Objective, pad_id: int,
                 max_length: int, max_prompt_length: int, tile_above: int = DEFAULT_TILE_ABOVE,
                 layout: Layout = PADDED) -> None:
        self.seam, self.policy, self.reference, self.objective = seam, policy, reference, objective
        self.layout = layout  # for batches the step builds itself (KTO's mismatched completions)
        self.tile_above = tile_above  # longer batches: log-probs without [B, T, V] logits (model.tiled_logps_above)
        self.pad_id, self.max_length, self.max_prompt_length = pad_id, max_length, max_prompt_length
        self.with_prompt = "prompt_logps" in objective.requires
        self.reward_model = "rewards" in objective.requires
        self.timer = PhaseTimer()  # the loop shares it (and may make it synchronise the device)

    def objective_inputs(self, batch: MicroBatch) -> Dict[str, Any]:
        """The objective's `batch` mapping: annotations, example weights (0 = padding), response lengths and,
        for KTO, the no-grad statistics of the mismatched completions. Needs no forward with gradient."""
        device = self.seam.device
        inputs = dict(batch.annotations, weights=batch.weights, lengths=response_lengths(batch.tokens))
        if "mismatched" in self.objective.requires:
            mism = mismatched_tokens(batch, self.pad_id, self.max_length, self.max_prompt_length, self.layout).to(device)
            with torch.no_grad():
                inputs["mismatched_policy"] = stats(self.policy, mism)
                inputs["mismatched_reference"] = stats(self.reference, mism) if self.reference is not None else None
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}

    def objective_output(self, batch: MicroBatch, inputs: Dict[str, Any]) -> Any:
        tokens = batch.tokens.to(self.seam.device)
        policy_stats = stats(self.policy, tokens, self.with_prompt, self.reward_model, self.tile_above)
        reference_stats = self.reference_stats(batch, tokens)
        return self.objective.loss(policy_stats, reference_stats, inputs), policy_stats

    def reference_stats(self, batch: MicroBatch, tokens: "TokenBatch | PackedBatch") -> Optional[SequenceStats]:
        if not self.objective.needs_reference:
            return None
        if batch.stored_reference is not None:
            return SequenceStats(**{k: v.to(self.seam.device) for k, v in batch.stored_reference.items()})
        with torch.no_grad():
            return stats(self.reference, tokens, self.with_prompt, tile_above=self.tile_above)

    def train_step(self, micro_batches: Sequence[MicroBatch],
                   flags: Optional[Dict[str, float]] = None) -> Dict[str, float]:
        """Loss normalised by the global number of real examples across ranks and micro-batches, so 2 ranks ×
        4 examples give the same gradient as 1 rank × 8. DeepSpeed averages gradients over ranks and divides by
        the accumulation steps itself, hence the factor world_size × grad_accum.

        A step in which any micro-batch's loss is non-finite (on any rank) changes nothing. Every rank must take
        the same branch before the collectives of backward/step, yet no weight moves before the last
        micro-batch's `step`: so the global verdict rides on the step's one metrics all-reduce, after the last
        forward. A non-accumulating step then returns at once; otherwise the micro-batches that are non-finite
        here (and the last one after a bad verdict) run backward/step with a zero loss (DeepSpeed's accumulation
        count and collectives stay aligned) and the boundary step is told to skip the update
        (`seam.skip_next_update`). A gradient-combined objective's Gram is collective itself: it gets a verdict
        (an all-reduce) per micro-batch.

        `flags`: this rank's values (the loop's stop request), returned summed over ranks on every path; they
        ride on the same all-reduce. Phases are timed into `self.timer`."""
        flags = dict(flags or {})
        with self.timer.phase("forward"):
            inputs = [self.objective_inputs(mb) for mb in micro_batches]
        with self.timer.phase("comm"):
            global_count, window_means = self._window(micro_batches, inputs)
        scale = self.seam.world_size * len(micro_batches) / max(global_count, 1.0)
        sums: Dict[str, torch.Tensor] = {}  # metric → (weighted sum, weight) on the device: no host read per metric
        combined = isinstance(self.objective, GradientCombinedObjective)
        local_bad, tokens, totals = 0.0, 0.0, None
        for index, (mb, batch) in enumerate(zip(micro_batches, inputs)):
            last = index == len(micro_batches) - 1
            with self.timer.phase("forward"):
                out, policy_stats = self.objective_output(mb, {**batch, "window_means": window_means})
                weights = mb.weights.to(out.losses.device, out.losses.dtype)
                loss = (out.losses * weights).sum() * scale
                finite = bool(torch.isfinite(loss))  # a host read, no collective
                local_bad += not finite
                if not combined:  # non-finite too: every rank must pack the same names (discarded then anyway)
                    accumulate_metrics(sums, out, weights)
                    tokens += self._tokens(mb)
            with self.timer.phase("comm"):
                if combined:
                    bad = float(self.seam.all_reduce_sum(torch.tensor([float(not finite)], dtype=torch.float64))[0]) > 0
                elif last:
                    totals = self._reduce(sums, {**flags, "tokens": tokens, "nonfinite": local_bad})
                    bad = totals["nonfinite"] > 0
                else:
                    bad = not finite  # this rank's view: the verdict comes with the last micro-batch
            if bad and (combined or last):
                if len(micro_batches) == 1:
                    return self._skipped(flags, totals)
                self.seam.skip_next_update()
            if bad or not finite:
                loss = (policy_stats.logps.nan_to_num(0.0, 0.0, 0.0) * 0.0).sum()
            elif combined:
                with self.timer.phase("backward"):
                    # After the finiteness check: the exact Gram runs collective backwards on every rank.
                    loss, extra = combined_loss(self.seam, self.objective, out, policy_stats.logps, weights, scale,
                                                objective_names(batch, out.components.shape[1]))
                out.metrics.update(extra)
                accumulate_metrics(sums, out, weights)
                tokens += self._tokens(mb)
            with self.timer.phase("backward"):
                self.seam.backward(loss)
            with self.timer.phase("optimizer"):
                self.seam.step()
        if combined:
            with self.timer.phase("comm"):
                totals = self._reduce(sums, {**flags, "tokens": tokens, "nonfinite": local_bad})
        if totals["nonfinite"] > 0:  # like the early return: a step that changed nothing reports no loss
            return {"nonfinite": 1.0, **{name: totals[name] for name in flags}}
        return {**totals, "nonfinite": 0.0}

    def _skipped(self, flags: Dict[str, float], totals: Optional[Dict[str, float]]) -> Dict[str, float]:
        """The early return of a non-accumulating non-finite step; the flags still need their sums."""
        if totals is None:  # the per-micro-batch verdict carried no flags: every rank is here, one more all-reduce
            with self.timer.phase("comm"):
                totals = self._reduce({}, flags)
        return {"nonfinite": 1.0, **{name: totals[name] for name in flags}}

    @staticmethod
    def _tokens(mb: MicroBatch) -> float:
        sp = sequence_parallel.active()  # the ranks of an SP group hold the same tokens: count them once
        return mb.tokens.num_tokens / (sp.size if sp else 1)

    def _window(self, micro_batches: Sequence[MicroBatch], inputs: List[Dict[str, Any]]) -> tuple:
        """One all-reduce per step: the global number of real examples, and the objective's window statistics
        summed over this step's micro-batches and all ranks, as means (see `Objective.window_stats`)."""
        local = {"count": torch.tensor([sum(float(mb.weights.sum()) for mb in micro_batches)], dtype=torch.float64)}
        for batch in inputs:
            for name, value in self.objective.window_stats(batch).items():
                local[name] = local.get(name, 0) + value.detach().double().cpu()
        names = sorted(local)
        packed = self.seam.all_reduce_sum(torch.cat([local[n] for n in names]))
        totals = dict(zip(names, packed.split([len(local[n]) for n in names])))
        count = float(totals.pop("count")[0])
        return count, {name: ratio(*value).to(self.seam.device) for name, value in totals.items()}

    def evaluate(self, batches: List[MicroBatch]) -> Dict[str, float]:
        """Held-out pairwise accuracy of the current policy (see `evaluate_pairs`)."""
        beta = float(getattr(self.objective, "beta", ranking.DEFAULT_BETA))
        return evaluate_pairs(self.seam, self.policy, self.reference, batches, reward=self.reward_model, beta=beta)

    def _reduce(self, sums: Dict[str, torch.Tensor], scalars: Dict[str, float]) -> Dict[str, float]:
        """One all-reduce and one host read: per-example metrics as global means over real examples of all
        ranks, `scalars` (tokens, non-finite count, flags) as global sums."""
        names, keys = sorted(sums), sorted(scalars)
        device = self.seam.device
        parts = [torch.stack([sums[n] for n in names]).flatten()] if names else []
        parts.append(torch.tensor([float(scalars[k]) for k in keys], dtype=torch.float64, device=device))
        packed = self.seam.all_reduce_sum(torch.cat(parts)).tolist()
        pairs = zip(packed[0 : 2 * len(names) : 2], packed[1 : 2 * len(names) : 2])
        out = {n: total / count if count > 0 else float("nan") for n, (total, count) in zip(names, pairs)}
        return out | dict(zip(keys, packed[2 * len(names):]))


def accumulate_metrics(sums: Dict[str, torch.Tensor], out: Any, weights: torch.Tensor) -> None:
    """Add (weighted sum, weight) per metric. NaN entries mean "not applicable to this example" (e.g. a KTO
    class metric on the other class) and are left out of both; batch-level scalars count per example.
    Stays on the weights' device: the step reads all sums at once, after its last forward."""
    weights = weights.detach().double()
    pairs = {"loss": out.losses.detach()} | dict(out.metrics)
    for name, value in pairs.items():
        value = value.detach().double().to(weights.device)
        value = value.expand(len(weights)) if value.dim() == 0 else value.reshape(len(weights), -1).mean(-1)
        present = ~torch.isnan(value)
        w = weights * present
        entry = torch.stack([(value.nan_to_num(0.0) * w).sum(), w.sum()])
        sums[name] = sums[name] + entry if name in sums else entry


@torch.no_grad()
def evaluate_pairs(seam: Any, policy: Any, reference: Optional[Any], batches: List[MicroBatch],
                   reward: bool = False, beta: float = ranking.DEFAULT_BETA,
                   alpha: float = ranking.DEFAULT_ALPHA) -> Dict[str, float]:
    """Held-out pairwise accuracy: policy margin ℓ_θ(y_w) > ℓ_θ(y_l) (for a reward model r(y_w) > r(y_l)), the
    same with per-token mean log-probs (`policy_accuracy_mean`) and (with a reference) the implicit reward margin
    ρ(y_w) > ρ(y_l), ρ = log π − log π_ref, and Chen et al.'s idealized ranking accuracy for β (the reference
    margin + logit(α)/β > 0, see `framework.engine.ranking`). The plain keys take column 0 as chosen; a
    multi-objective batch also gets `eval/<objective>/...` per objective and, when its rows carry the overall
    human label, `eval/overall/...`, each over the pairs that preference orders (ties left out).
    Every rank runs its share (ZeRO-3 forwards are collective); one all-reduce."""
    keys = list(eval_preferences(batches[0])) if batches else [""]
    # per preference: pairs, policy correct, reward correct, per-token-mean correct, idealized correct
    totals = torch.zeros(len(keys), 5, dtype=torch.float64)
    margin_sum = torch.zeros(1, dtype=torch.float64)
    for mb in batches:
        tokens = mb.tokens.to(seam.device)
        policy_stats = stats(policy, tokens, reward=reward)
        score = policy_stats.rewards if reward else policy_stats.logps
        margin = (score[:, 0] - score[:, 1]).double().cpu()
        per_token = (score / policy_stats.lengths.clamp(min=1)).double().cpu() if not reward else score.double().cpu()
        mean_margin = per_token[:, 0] - per_token[:, 1]
        rho_margin, ideal_margin = torch.zeros_like(margin), torch.zeros_like(margin)
        if reference is not None:
            reference_logps = stats(reference, tokens).logps.double().cpu()
            ref_margin = reference_logps[:, 0] - reference_logps[:, 1]
            rho_margin = policy_stats.logps[:, 0].double().cpu() - policy_stats.logps[:, 1].double().cpu() - ref_margin
            ideal_margin = ranking.idealized_margins(ref_margin, torch.full_like(ref_margin, alpha), beta)
        w = mb.weights.double()
        margin_sum += (margin * w).sum()
        for row, sign in zip(totals, eval_preferences(mb).values()):
            counted = w * (sign != 0)
            row += torch.stack([counted.sum()] + [(counted * (sign * m > 0)).sum()
                                                  for m in (margin, rho_margin, mean_margin, ideal_margin)])
    packed = seam.all_reduce_sum(torch.cat([totals.flatten(), margin_sum]))
    totals, margin_sum = packed[:-1].view(len(keys), 5), float(packed[-1])
    out = {"eval/policy_margin": margin_sum / max(float(totals[0, 0]), 1.0)}
    for key, (pairs, policy_correct, reward_correct, mean_correct, ideal_correct) in zip(keys, totals.tolist()):
        if key and pairs == 0:  # e.g. no row carries the overall label
            continue
        prefix = f"eval/{key}/" if key else "eval/"
        out |= {f"{prefix}policy_accuracy": policy_correct / max(pairs, 1.0), f"{prefix}pairs": pairs,
                f"{prefix}policy_accuracy_mean": mean_correct / max(pairs, 1.0)}
        if reference is not None:
            out[f"{prefix}reward_accuracy"] = reward_correct / max(pairs, 1.0)
            out[f"{prefix}idealized_accuracy"] = ideal_correct / max(pairs, 1.0)
    return out


def eval_preferences(batch: MicroBatch) -> Dict[str, torch.Tensor]:
    """The preferences evaluated on `batch`: key ("" = the pair as stored, column 0 chosen; `overall`; one per
    objective) → sign per example: +1 prefers column 0, −1 column 1, 0 no preference. Every batch of a store
    yields the same keys, so every rank packs the same all-reduce."""
    count = len(batch.weights)
    prefs = {"": torch.ones(count, dtype=torch.float64)}
    scores = batch.annotations.get("objective_scores")
    if scores is None:
        return prefs
    overall = batch.annotations.get("overall_scores")
    prefs["overall"] = (torch.sign(overall[:, 0] - overall[:, 1]).double() if overall is not None
                        else torch.zeros(count, dtype=torch.float64))
    for i, name in enumerate(batch.annotations["objective_names"]):
        prefs[name] = torch.sign(scores[:, 0, i] - scores[:, 1, i]).double()
    return prefs
