"""The listwise benchmark's data and arithmetic: exact token lengths, steady-state step time, ratios."""

import pytest

from benchmarks.listwise import ranked_rows, steady_step_time, summarise


def test_ranked_rows_have_the_requested_token_lengths():
    from transformers import AutoTokenizer

    from framework.model.demo import demo_tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_path())
    rows = ranked_rows(3, 4, prompt_tokens=40, response_tokens=10)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert [count(r["prompt"]) for r in rows] == [40] * 3
    assert {count(text) for r in rows for text in r["responses"]} == {10}
    assert all(len(set(r["responses"])) == 4 and r["scores"] == [4.0, 3.0, 2.0, 1.0] for r in rows)


def test_steady_step_time_is_the_median_after_warmup():
    rows = [{"step": 1, "step_time": 9.0}, {"step": 2, "step_time": 1.0}, {"step": 3, "step_time": 3.0},
            {"step": 4, "step_time": 2.0}, {"step": 0, "eval/accuracy": 0.5}]
    assert steady_step_time(rows, warmup=1) == 2.0
    with pytest.raises(ValueError):
        steady_step_time(rows, warmup=4)


def test_summarise_sharing_speedup_and_k_scaling():
    runs = [{"k": 2, "shared_prompt": True, "step_time_s": 1.0}, {"k": 2, "shared_prompt": False, "step_time_s": 1.5},
            {"k": 8, "shared_prompt": True, "step_time_s": 2.0}, {"k": 8, "shared_prompt": False, "step_time_s": 7.0}]
    assert summarise(runs) == {"shared_speedup": {"k2": 1.5, "k8": 3.5}, "k8_over_k2_shared": 2.0}
