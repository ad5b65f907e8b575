"""Per-sequence log-probs: the chunked selective log-softmax and the masks, against a naive computation."""

import torch

from framework.model.batching import collate, fit_lengths
from framework.model.logprobs import sequence_logps, token_logps


def test_token_logps_matches_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11, dtype=torch.float64)
    labels = torch.randint(0, 11, (5, 7))
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logps(logits, labels, chunk_rows=2).double(), expected, atol=1e-6)


def test_collate_masks_and_ragged_lists():
    batch = collate([[1, 2], [3]], [[[4, 5], [6]], [[7, 8, 9]]], pad_id=0)
    assert batch.input_ids.shape == (4, 4)  # 2 examples x K=2 rows; longest sequence [1, 2, 4, 5]
    assert batch.valid.tolist() == [[True, True], [True, False]]
    assert batch.response_mask[0].tolist() == [False, False, True, True]
    assert batch.prompt_mask[2].tolist() == [True, False, False, False]
    assert batch.response_mask[3].sum() == 0  # the padded list entry has no response tokens


def test_fit_lengths_keeps_prompt_end_and_response_start():
    prompt, response = fit_lengths(list(range(10)), list(range(100, 110)), max_length=8, max_prompt_length=4)
    assert prompt == [6, 7, 8, 9] and response == [100, 101, 102, 103]


def test_sequence_logps_equals_naive_sum(tiny_model_dir):
    from framework.model.loading import load_causal_lm

    model = load_causal_lm(tiny_model_dir).eval()
    prompts = [[5, 6, 7], [8, 9]]
    responses = [[[10, 11], [12, 13, 14]], [[15], [16, 17]]]
    batch = collate(prompts, responses, pad_id=0)
    with torch.no_grad():
        out = sequence_logps(model, batch, with_prompt=True)
        for b, prompt in enumerate(prompts):
            for k, response in enumerate(responses[b]):
                ids = torch.tensor([prompt + response])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                per_token = logp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
                assert abs(float(per_token[len(prompt) - 1 :].sum()) - float(out["logps"][b, k])) < 1e-4
                assert abs(float(per_token[: len(prompt) - 1].sum()) - float(out["prompt_logps"][b, k])) < 1e-4
                assert out["lengths"][b, k] == len(response)
