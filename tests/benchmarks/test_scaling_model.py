"""The GPU scaling model's arithmetic: parameter counts, FLOPs of a hand-computed config, ZeRO traffic ratios."""

import pytest

from benchmarks.scaling_model import (SHAPES, Setup, Shape, Workload, comm_bytes, example_flops, main,
                                      model_state_bytes, peer_check, step_estimate)


def test_parameter_counts_match_the_published_models():
    assert [shape.params() for shape in SHAPES] == [1_235_814_400, 6_738_415_616, 70_553_706_496]


def test_flops_of_a_tiny_config_by_hand():
    # 1 layer, hidden 4, ffn 8, vocab 10, one KV head of width 4: Linears q,k,v,o 4·16 + MLP 3·4·8 + LM head 40.
    shape = Shape("tiny", layers=1, hidden=4, heads=1, kv_heads=1, ffn=8, vocab=10)
    assert shape.matmul_params() == 64 + 96 + 40 and shape.params() == 200 + 40 + 3 * 4
    pair = Workload("p", prompt=2, response=1)
    # Unshared: 2 rows of 3 tokens, 2·(1+2+3) = 12 causal pairs. Shared: [p p r1 r2], 1+2 + 2·(2+1) = 9 pairs.
    assert (pair.tokens(False), pair.attended_pairs(False)) == (6, 12)
    assert (pair.tokens(True), pair.attended_pairs(True)) == (4, 9)
    forward_plain = 2 * 200 * 6 + 4 * 1 * 4 * 12  # 2592
    forward_shared = 2 * 200 * 4 + 4 * 1 * 4 * 9  # 1744
    assert example_flops(shape, pair, shared=False) == 4 * forward_plain  # policy 3 forwards + reference 1
    assert example_flops(shape, pair, shared=True) == 4 * forward_shared
    assert example_flops(shape, pair, shared=True, reference=False) == 3 * forward_shared


def test_sharing_saves_tokens_as_the_prompt_grows():
    hh, long_prompt = Workload("hh", 330, 130), Workload("long", 2048, 256)
    assert hh.tokens(False) / hh.tokens(True) == pytest.approx(920 / 590)
    assert long_prompt.tokens(False) / long_prompt.tokens(True) > hh.tokens(False) / hh.tokens(True)
    assert Workload("one", 330, 130, k=1).tokens(True) == Workload("one", 330, 130, k=1).tokens(False)


def test_zero3_moves_one_and_a_half_times_zero2_and_twice_with_a_partitioned_reference():
    params, world = 7_000_000_000, 8
    zero2 = comm_bytes(params, 2, world, reference=False)
    assert zero2 == pytest.approx(2 * params * 2 * 7 / 8)  # reduce-scatter + all-gather, bf16, ring (n-1)/n
    assert comm_bytes(params, 3, world, reference=False) / zero2 == pytest.approx(1.5)
    assert comm_bytes(params, 3, world, reference=True) / comm_bytes(params, 2, world) == pytest.approx(2.0)
    # Accumulation: ZeRO-2 gathers parameters once per step, ZeRO-3 gathers them in every micro-batch.
    assert comm_bytes(params, 2, world, accumulation=4) == pytest.approx(5 / 2 * zero2)
    with pytest.raises(ValueError):
        comm_bytes(params, 1, world)


def test_zero3_partitions_every_model_state_and_the_reference():
    params = 1_000_000
    assert model_state_bytes(params, 3, world=1) == model_state_bytes(params, 2, world=1) == 18 * params
    assert model_state_bytes(params, 3, world=8) == pytest.approx(18 * params / 8)
    assert model_state_bytes(params, 2, world=8) == pytest.approx(4 * params + 14 * params / 8)


def test_a_slow_link_makes_the_step_communication_bound():
    shape, pair = SHAPES[1], Workload("hh", 330, 130)
    fast = step_estimate(shape, pair, Setup("nvlink", 989, 450, 8), 3, True, mfu=0.35, batch=8)
    slow = step_estimate(shape, pair, Setup("ib", 989, 50, 64), 3, True, mfu=0.35, batch=8)
    assert fast["bound"] == "compute" and slow["bound"] == "comm"
    assert slow["examples_per_s"] < fast["examples_per_s"]


def test_peer_check_and_tables(capsys):
    rows = {row["dataset"]: row for row in peer_check()}
    assert 0.05 < rows["HH-RLHF"]["fa3_mfu"] < 0.2 and rows["Capybara"]["predicted_saving"] > 1.3
    assert main(["--mfu", "0.4"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 70B (Llama-3-70B) |") == 3 + 4 + 4  # workloads, then setups in the comm and speed tables
    assert "MFU 40%" in out
