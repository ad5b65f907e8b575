"""PAL (objective=pal_reward + framework/model/pal.py): K = 1 is one Bradley–Terry model, prototypes are
exchangeable, a new user's weights are fitted few-shot, and an export scores per user."""

from __future__ import annotations

import pytest
import torch

from framework.model.pal import PALHead, fit, fit_user, load, rewards, save
from framework.objectives import SequenceStats, build_objective


def _data(n: int = 64, users: int = 3, embedding: int = 8, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"prompts": torch.randn(n, embedding, generator=gen), "responses": torch.randn(n, 2, embedding, generator=gen),
            "users": torch.arange(n) % users}


@pytest.mark.parametrize("variant", ["a", "b"])
def test_one_prototype_is_a_single_bradley_terry_model(variant):
    data = _data()
    head = PALHead(8, num_users=3, variant=variant, num_prototypes=1, seed=1)
    with torch.no_grad():
        head.user_logits.copy_(torch.randn(3, 1))  # any per-user weights: softmax over one prototype is 1
    pal = build_objective("pal_reward", variant=variant, num_prototypes=1)
    items = head.items(data["prompts"], data["responses"])
    losses = pal.pal_loss(items, head.ideal_points(data["users"], data["prompts"]))
    # Every user gets the same rewards ...
    other_users = pal.pal_rewards(items, head.ideal_points(torch.zeros_like(data["users"]), data["prompts"]))
    assert torch.allclose(pal.pal_rewards(items, head.ideal_points(data["users"], data["prompts"])), other_users)
    # ... and the loss is bt_reward's on them.
    bt = build_objective("bt_reward").loss(SequenceStats(torch.zeros(64, 2), torch.ones(64, 2), rewards=other_users), None, {})
    assert torch.allclose(losses, bt.losses, atol=1e-6)


@pytest.mark.parametrize("variant", ["a", "b"])
def test_permuting_prototypes_with_the_weights_leaves_the_loss_unchanged(variant):
    data = _data()
    head = PALHead(8, num_users=3, variant=variant, num_prototypes=4, seed=2)
    with torch.no_grad():
        head.user_logits.copy_(torch.randn(3, 4))
    pal = build_objective("pal_reward", variant=variant, num_prototypes=4)

    def loss() -> torch.Tensor:
        return pal.pal_loss(head.items(data["prompts"], data["responses"]), head.ideal_points(data["users"], data["prompts"]))

    before = loss()
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        head.user_logits.copy_(head.user_logits[:, perm])
        if variant == "a":
            head.prototypes.copy_(head.prototypes[perm])
        else:  # g's output holds the K points one after another: permute its rows in blocks of D
            rows = (perm[:, None] * head.dim + torch.arange(head.dim)).reshape(-1)
            head.prompt_points[2].weight.copy_(head.prompt_points[2].weight[rows])
            head.prompt_points[2].bias.copy_(head.prompt_points[2].bias[rows])
    assert torch.allclose(loss(), before, atol=1e-6)
    with torch.no_grad():  # and permuting the weights alone does change it (the test can fail)
        head.user_logits.copy_(head.user_logits[:, perm])
    assert not torch.allclose(loss(), before, atol=1e-4)


def _two_groups(n: int, seed: int) -> dict:
    """Users 0-3 prefer the response with the larger first feature, users 4-7 the smaller one."""
    data = _data(n, users=8, embedding=2, seed=seed)  # few noise dimensions: 1k pairs generalise
    users = data["users"]
    first = data["responses"][:, :, 0]
    swap = (first[:, 0] < first[:, 1]) == (users < 4)
    data["responses"][swap] = data["responses"][swap].flip(1)
    return data


def test_pal_fits_disagreeing_groups_and_a_new_user_few_shot():
    torch.manual_seed(0)
    data, pal = _two_groups(1024, seed=0), build_objective("pal_reward", num_prototypes=2)
    head = PALHead(2, num_users=8, num_prototypes=2, seed=0)
    losses = fit(head, pal, data, steps=300)
    assert losses[-1] < 0.3 * losses[0]
    held_out = _two_groups(400, seed=3)
    assert (rewards(head, pal, held_out).diff(dim=1) < 0).float().mean() > 0.9  # chosen ranked first per user
    # A new user of the second group: fit its mixture from 16 pairs, test on 200 more.
    shots, test = _two_groups(16, seed=1), _two_groups(200, seed=2)
    for split in (shots, test):
        keep = split["users"] >= 4
        for key in split:
            split[key] = split[key][keep]
    before = [p.detach().clone() for p in head.parameters()]
    logits = fit_user(head, pal, shots)
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters()))  # only the new user's weights moved
    new_user = torch.cat([head.user_logits.detach(), logits[None]])
    test["users"] = torch.full_like(test["users"], 8)
    assert (rewards(head, pal, test, user_logits=new_user).diff(dim=1) < 0).float().mean() > 0.85


def test_export_round_trips(tmp_path):
    head = PALHead(8, num_users=2, variant="b", num_prototypes=3, seed=4)
    save(head, ["alice", "bob"], str(tmp_path / "export"), {"encoder": "x", "max_length": 16, "objective": {}})
    loaded, config = load(str(tmp_path / "export"))
    assert config["users"] == ["alice", "bob"] and (tmp_path / "export/users/bob/pal_user.json").is_file()
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.slow
def test_train_objective_pal_reward_exports_a_judge_per_user(tmp_path, tiny_model_dir, ray_local):
    from tests.conftest import compose

    from framework.cluster.evaluate import check_judge
    from framework.model.reward import score
    from framework.run import format_summary, train

    cfg = compose(["objective=pal_reward", f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'run'}",
                   "data.demo_train_rows=200", "data.demo_eval_rows=64", "train.max_steps=20", "cluster.num_workers=2"])
    summary = train(cfg)
    assert summary["users"] == 8 and summary["rows"] == 200 and summary["final_loss"] < summary["loss_start"]
    assert set(summary["eval/pal_accuracy_per_user"]) == {f"{g}-{i}" for g in ("topic", "brief") for i in range(4)}
    assert summary["eval/new_users_pairs"] > 0 and "PAL reward model" in format_summary(summary)
    judge = f"{summary['export']}/users/topic-0"
    check_judge(judge)
    rewards = score(judge, ["tell me about fruit ."] * 2, ["apple pear .", "drum saw ."])
    assert len(rewards) == 2 and rewards[0] != rewards[1]
