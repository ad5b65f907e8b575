"""The shared-prompt and packed layouts give the padded layout's per-sequence log-probs, losses and gradients."""

from __future__ import annotations

import pytest
import torch

from framework.model.batching import PADDED, Layout, PackedBatch, TokenBatch, build_tokens, collate, pack
from framework.model.logprobs import sequence_logps
from tests.conftest import single_rank

LAYOUTS = {"shared": Layout(shared_prompt=True), "packed": Layout(packing=True),
           "shared+packed": Layout(shared_prompt=True, packing=True),
           "shared+packed, 64-token rows": Layout(shared_prompt=True, packing=True, pack_tokens=64)}


def _llama(attention: str = "sdpa") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    config._attn_implementation = attention
    return LlamaForCausalLM(config)


def _examples(seed: int) -> tuple:
    """Pairs and ragged lists, an empty prompt, an empty response, prompts and responses cut by the budgets."""
    gen = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(1, 64, (n,), generator=gen).tolist()  # noqa: E731
    prompts = [ids(5), ids(14), ids(3), [], ids(7)]
    responses = [[ids(6), ids(4)], [ids(2), ids(9), ids(3)], [ids(5)], [ids(4), []], [ids(12), ids(1), ids(3)]]
    return prompts, responses


def _stats_and_grads(model: torch.nn.Module, tokens, tile_above: int = 1024) -> tuple:
    model.zero_grad()
    out = sequence_logps(model, tokens, with_prompt=True, tile_above=tile_above)
    # Non-linear in the sums, so every sequence's gradient weighs differently.
    loss = -torch.nn.functional.logsigmoid(out["logps"][:, 0] - out["logps"][:, 1] * 0.5).sum() \
        + 0.1 * out["prompt_logps"].sum()
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "sdpa per block", "eager"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layouts_equal_padded_values_and_gradients(name, attention, monkeypatch):
    from framework.model import attention as block_attention

    calls = []
    if attention == "sdpa per block":  # the per-block SDPA path, which rows this short would not take
        monkeypatch.setattr(block_attention, "BLOCKWISE_FROM", 0)
        counted = block_attention.sdpa_attention_forward
        monkeypatch.setattr(block_attention, "sdpa_attention_forward",
                            lambda *a, **k: calls.append(a[1].shape[2]) or counted(*a, **k))
    model = _llama(attention.split()[0])
    prompts, responses = _examples(1)
    budget = dict(pad_id=0, max_length=16, max_prompt_length=8)
    padded, padded_grads = _stats_and_grads(model, collate(prompts, responses, **budget))
    tokens = pack(prompts, responses, layout=LAYOUTS[name], **budget)
    out, grads = _stats_and_grads(model, tokens)
    for key in ("logps", "lengths", "prompt_logps", "prompt_lengths"):
        assert torch.allclose(out[key], padded[key], atol=1e-5), (key, out[key], padded[key])
    assert padded_grads.keys() == grads.keys()
    for key, grad in padded_grads.items():
        assert torch.allclose(grads[key], grad, atol=1e-5), key
    assert torch.equal(tokens.valid, collate(prompts, responses, **budget).valid)
    if attention == "sdpa per block":  # per layer (2), every real token is a query once, padding never
        assert sum(calls) == 2 * tokens.forwarded_tokens < 2 * tokens.input_ids.numel()


def test_tiled_head_in_the_packed_layout_equals_padded():
    model = _llama()
    prompts, responses = _examples(2)
    budget = dict(pad_id=0, max_length=16, max_prompt_length=8)
    padded, padded_grads = _stats_and_grads(model, collate(prompts, responses, **budget))
    out, grads = _stats_and_grads(model, pack(prompts, responses, layout=LAYOUTS["shared+packed"], **budget), 4)
    assert torch.allclose(out["logps"], padded["logps"], atol=1e-5)
    assert all(torch.allclose(grads[k], g, atol=1e-5) for k, g in padded_grads.items())


def test_shared_prompt_mask_and_positions_by_hand():
    """Prompt [1 2], responses [3 4] and [5]: one row; each response sees the prompt and itself only."""
    tokens = pack([[1, 2]], [[[3, 4], [5]]], layout=Layout(shared_prompt=True), pad_id=0)
    assert tokens.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert tokens.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    expected = [[1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [1, 1, 1, 0, 0],
                [1, 1, 1, 1, 0],
                [1, 1, 0, 0, 1]]
    assert tokens.attention_mask()[0, 0].int().tolist() == expected
    # Predictions: token 3 and token 5 both from the prompt's last position (1); token 4 from position 2.
    response = ~tokens.is_prompt
    assert tokens.source[response].tolist() == [1, 2, 1]
    assert tokens.label[response].tolist() == [3, 4, 5]
    assert tokens.owner[response].tolist() == [0, 0, 1]
    assert tokens.lengths.tolist() == [[2.0, 1.0]]
    assert tokens.num_tokens == 4 + 3 and tokens.forwarded_tokens == 5


def test_packing_puts_short_blocks_beside_long_ones_and_pads_alone():
    # Blocks of 10, 6, 4, 3 tokens: rows of 10 → [10], [6, 4], [3].
    prompts = [[1] * 5, [2] * 3, [3] * 2, [4] * 1]
    responses = [[[9] * 5], [[9] * 3], [[9] * 2], [[9] * 2]]
    tokens = pack(prompts, responses, layout=Layout(packing=True), pad_id=0, max_length=64, max_prompt_length=64)
    assert tokens.input_ids.shape == (3, 10)
    assert tokens.block.tolist()[1] == [0] * 6 + [1] * 4
    assert tokens.position_ids.tolist()[1] == list(range(6)) + list(range(4))
    mask = tokens.attention_mask()[2, 0]
    assert mask[3:, 3:].int().tolist() == torch.eye(7, dtype=torch.int).tolist()  # padding sees itself only
    assert not mask[6:, :6].any()  # no attention across blocks


def test_builders_keep_padded_rows_where_sharing_does_not_apply():
    prompts, responses = _examples(3)
    budget = dict(pad_id=0, max_length=16, max_prompt_length=8)
    own_prompts = [[p] * len(r) for p, r in zip(prompts, responses)]  # DOVE: each response has its own prompt
    assert isinstance(build_tokens(prompts, responses, layout=PADDED, **budget), TokenBatch)
    assert isinstance(build_tokens(prompts, responses, layout=LAYOUTS["shared"], **budget), PackedBatch)
    assert isinstance(build_tokens(prompts, responses, layout=LAYOUTS["shared"], response_prompts=own_prompts,
                                   **budget), TokenBatch)
    from framework.engine.batches import BatchBuilder

    assert BatchBuilder(0, 16, 8, "pairwise", False, ("rewards",), layout=LAYOUTS["shared"]).layout == PADDED


def test_flash_attention_packs_single_sequences_by_positions_only():
    """No flash-attn here: the input choice is checked (transformers finds varlen blocks from position resets)."""
    import types

    from framework.model.logprobs import _packed_inputs, supports_packed

    flash = types.SimpleNamespace(config=types.SimpleNamespace(_attn_implementation="flash_attention_2"))
    prompts, responses = _examples(4)
    single = pack(prompts, responses, layout=Layout(packing=True), pad_id=0)
    assert supports_packed(flash, shared_prompt=False) and not supports_packed(flash)
    assert set(_packed_inputs(flash, single)) == {"input_ids", "position_ids"}
    with pytest.raises(ValueError, match="shared-prompt rows need SDPA or eager"):
        _packed_inputs(flash, pack(prompts, responses, layout=Layout(shared_prompt=True), pad_id=0))
    assert set(_packed_inputs(_llama(), single)) == {"input_ids", "position_ids", "attention_mask"}


def test_default_config_turns_the_fast_layouts_on():
    from tests.conftest import compose

    model = compose([]).model
    assert model.shared_prompt and model.packing and model.pack_tokens == 0


# -- the real DeepSpeed engine: ZeRO-2 and ZeRO-3 train the same with every layout ---------------------


def layout_scenario(stage: int) -> dict:
    """Three DPO steps (2 micro-batches each) from the same start, padded vs shared+packed rows, live reference
    (under ZeRO-3 its own partitioned engine): the per-step losses and the weights after."""
    from framework.config import DeepSpeedConfig, TrainConfig
    from framework.engine.batches import MicroBatch
    from framework.engine.seam import DeepSpeedSeam
    from framework.engine.step import StepRunner
    from framework.objectives import build_objective

    torch.set_num_threads(1)
    train = TrainConfig(micro_batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=0, max_steps=10)
    results = {}
    for name, layout in (("padded", PADDED), ("shared+packed", LAYOUTS["shared+packed"])):
        seam = DeepSpeedSeam(DeepSpeedConfig(zero_stage=stage), train, torch.device("cpu"), "gloo")
        if not torch.distributed.is_initialized():
            seam.init_distributed()
        engine = seam.wrap_policy(_llama(), total_steps=train.max_steps)
        # Adam with eps=1e-8 turns 1e-8 gradient rounding differences into ±lr sign flips of tiny-gradient
        # weights (seen: 1e-4 loss drift by step 2 in plain torch too); eps=1e-3 keeps the update Lipschitz.
        for group in engine.basic_optimizer.param_groups:
            group["eps"] = 1e-3
        reference = seam.wrap_reference(_llama())
        runner = StepRunner(seam, engine, reference, build_objective("dpo", beta=0.5), 0, 16, 8, layout=layout)
        losses = []
        for step in range(3):
            group = []
            for micro in range(2):
                prompts, responses = _examples(10 * step + micro)
                pairs = [r[:2] if len(r) > 1 else r * 2 for r in responses][:4]
                tokens = build_tokens(prompts[:4], pairs, layout=layout, pad_id=0, max_length=16, max_prompt_length=8)
                group.append(MicroBatch(tokens, {"mask": tokens.valid}, torch.ones(4)))
            losses.append(runner.train_step(group)["loss"])
        weights = [getattr(p, "ds_tensor", p).detach().clone() if getattr(p, "ds_tensor", None) is not None
                   and p.ds_tensor.numel() else p.detach().clone() for p in engine.module.parameters()]
        results[name] = {"losses": losses, "weights": [w.flatten().tolist() for w in weights]}
    diff = max(abs(a - b) for wa, wb in zip(results["padded"]["weights"], results["shared+packed"]["weights"])
               for a, b in zip(wa, wb))
    return {"losses": {k: v["losses"] for k, v in results.items()}, "max_weight_diff": diff}


@pytest.fixture(scope="module")
def zero_results() -> dict:
    return single_rank("tests.model.test_layout:layout_scenario", [2, 3])


@pytest.mark.slow  # one subprocess, four DeepSpeed engines: ~20 s
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_train_the_same_with_shared_packed_rows(zero_results, stage):
    result = zero_results[stage]
    padded, packed = result["losses"]["padded"], result["losses"]["shared+packed"]
    assert len(set(padded)) == 3  # the steps moved the loss
    assert all(abs(a - b) < 1e-5 for a, b in zip(padded, packed)), (padded, packed)
    assert result["max_weight_diff"] < 1e-5
