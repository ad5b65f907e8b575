"""The MFU benchmark's pure parts: the model-FLOP formula on a hand-computed config, and the matmul peak."""

from benchmarks.mfu import flops_per_pair, matmul_peak


def test_flops_of_a_shared_prompt_pair_by_hand():
    # N=1000, 2 layers, hidden 8, prompt 4, responses 2: row [p p p p | c c | r r] = 8 tokens.
    # Keys attended: prompt 1+2+3+4 = 10; each response 4+1 and 4+2 = 11, twice = 22; 32 in all.
    flops = flops_per_pair(1000, layers=2, hidden=8, prompt=4, response=2, shared=True)
    assert flops["tokens"] == 8
    assert flops["dense"] == 8 * 1000 * 8
    assert flops["attention"] == 16 * 2 * 8 * 32
    assert flops["total"] == 64_000 + 8_192


def test_flops_without_sharing_forward_the_prompt_per_response():
    # Two rows of 6 tokens: 2 · (1+…+6) = 42 attended keys.
    flops = flops_per_pair(1000, layers=2, hidden=8, prompt=4, response=2, shared=False)
    assert flops["tokens"] == 12
    assert flops["total"] == 8 * 1000 * 12 + 16 * 2 * 8 * 42


def test_matmul_peak_is_a_positive_rate_per_size():
    peak = matmul_peak(threads=1, sizes=(64, 128), repeats=1)
    assert set(peak["per_size_flops_per_s"]) == {"64", "128"}
    assert peak["flops_per_s"] == max(peak["per_size_flops_per_s"].values()) > 0
