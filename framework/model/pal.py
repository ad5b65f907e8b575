"""PAL pluralistic reward model (arXiv 2406.08469, OBJECTIVES.md §7.2): the parameters; the loss is
`objective=pal_reward` (framework/objectives/pal_reward.py).

On frozen text embeddings e(x) (prompt) and e(x, y) (prompt + response; framework/model/embedding.py):
  item embedding  f(x, y) = MLP([e(x), e(x, y)])                              [D]
  PAL-A           a_u = Σ_k w_uk p_k, K shared prototypes p_k                  [D]
  PAL-B           a_u(x) = Σ_k w_uk g_k(x), g = MLP(e(x)) -> K prompt-conditioned points
  w_u = softmax(user logits u)                                                 [K]
The objective turns (f(x, y_w), f(x, y_l), a_u) into rewards and a BT loss. A new user is fitted by learning
only a fresh row of user logits (`fit_user`), everything else frozen.

Choices not confirmed by the paper's code (stated here; the authors' learner.py files were not re-read):
* f sees the prompt embedding beside the prompt + response one, so PAL-A can express prompt-response fit;
  hidden width 64, GELU; prototypes start as N(0, 0.1²), user logits at 0 (uniform mixture).
* The encoder is frozen (embeddings precomputed once on Ray workers); a trainable encoder is not built.
* An export is a directory: `pal.json` (variant, sizes, user ids, encoder path and fingerprint, max_length),
  `head.pt` (state dict) and `users/<user_id>/pal_user.json`, the per-user judge `alignray eval --judge` takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

VARIANTS = ("a", "b")


def _mlp(inputs: int, outputs: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, outputs))


class PALHead(nn.Module):
    """Item map f, prototypes (PAL-A) or the prompt-conditioned prototype map g (PAL-B), and per-user logits."""

    def __init__(self, embedding_dim: int, num_users: int, *, variant: str = "a", num_prototypes: int = 2,
                 dim: int = 16, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"PAL variant must be one of {VARIANTS}, got {variant!r}")
        generator = torch.Generator().manual_seed(seed)
        self.variant, self.num_prototypes, self.dim = variant, num_prototypes, dim
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.item = _mlp(2 * embedding_dim, dim, hidden)
            self.prompt_points = _mlp(embedding_dim, num_prototypes * dim, hidden) if variant == "b" else None
        self.prototypes = nn.Parameter(0.1 * torch.randn(num_prototypes, dim, generator=generator)) if variant == "a" else None
        self.user_logits = nn.Parameter(torch.zeros(num_users, num_prototypes))

    def items(self, prompts: Tensor, responses: Tensor) -> Tensor:
        """f(x, y): [B, K, D] from prompt embeddings [B, E] and prompt + response embeddings [B, K, E]."""
        context = prompts.unsqueeze(1).expand(-1, responses.shape[1], -1)
        return self.item(torch.cat([context, responses], dim=-1))

    def ideal_points(self, users: Tensor, prompts: Tensor, user_logits: Optional[Tensor] = None) -> Tensor:
        """a_u (PAL-A) or a_u(x) (PAL-B): [B, D] for user indices [B] (rows of `user_logits`, default the head's)."""
        weights = torch.softmax((self.user_logits if user_logits is None else user_logits)[users], dim=-1)
        if self.variant == "a":
            return weights @ self.prototypes
        points = self.prompt_points(prompts).view(-1, self.num_prototypes, self.dim)
        return (weights.unsqueeze(-1) * points).sum(1)


def head_config(head: PALHead) -> Dict[str, Any]:
    """The sizes that rebuild `head` (stored in an export's pal.json)."""
    return {"variant": head.variant, "num_prototypes": head.num_prototypes, "dim": head.dim,
            "embedding_dim": head.item[0].in_features // 2, "hidden": head.item[0].out_features,
            "num_users": head.user_logits.shape[0]}


def fit(head: PALHead, objective: Any, data: Dict[str, Tensor], *, steps: int = 300, lr: float = 1e-2,
        params: Optional[Sequence[nn.Parameter]] = None, user_logits: Optional[Tensor] = None) -> List[float]:
    """Full-batch Adam on `data` (prompts [N, E], responses [N, 2, E] chosen first, users [N]); returns the
    loss per step. `params` restricts what is trained (default: the whole head)."""
    optimizer = torch.optim.Adam(list(params) if params is not None else head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = objective.pal_loss(head.items(data["prompts"], data["responses"]),
                                  head.ideal_points(data["users"], data["prompts"], user_logits)).mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def fit_user(head: PALHead, objective: Any, data: Dict[str, Tensor], *, steps: int = 200, lr: float = 5e-2) -> Tensor:
    """Few-shot: the mixture logits [K] of a new user from that user's pairs (`users` ignored); the head is frozen."""
    logits = torch.zeros(1, head.num_prototypes, requires_grad=True)
    for parameter in head.parameters():
        parameter.requires_grad_(False)
    try:
        fit(head, objective, dict(data, users=torch.zeros(len(data["prompts"]), dtype=torch.long)), steps=steps, lr=lr,
            params=[logits], user_logits=logits)
    finally:
        for parameter in head.parameters():
            parameter.requires_grad_(True)
    return logits.detach()[0]


def rewards(head: PALHead, objective: Any, data: Dict[str, Tensor], user_logits: Optional[Tensor] = None) -> Tensor:
    """[N, K] rewards of every response for each row's user."""
    with torch.no_grad():
        items = head.items(data["prompts"], data["responses"])
        return objective.pal_rewards(items, head.ideal_points(data["users"], data["prompts"], user_logits))


def save(head: PALHead, users: Sequence[str], out: str, info: Dict[str, Any], tokenizer: Any = None) -> Path:
    """Write the export directory (see the module docstring); `info` holds the encoder path, fingerprint, etc.
    The encoder's `tokenizer` is saved into every user's directory, where a judge's tokenizer is looked for."""
    directory = Path(out)
    (directory / "users").mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), directory / "head.pt")
    (directory / "pal.json").write_text(json.dumps(dict(info, head=head_config(head), users=list(users)), indent=2) + "\n")
    for user in users:
        (directory / "users" / user).mkdir(exist_ok=True)
        (directory / "users" / user / "pal_user.json").write_text(json.dumps({"user": user, "export": "../.."}) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory / "users" / user))
    return directory


def load(directory: str) -> tuple:
    """(head, config dict) of an export directory."""
    config = json.loads((Path(directory) / "pal.json").read_text())
    sizes = config["head"]
    head = PALHead(sizes["embedding_dim"], sizes["num_users"], variant=sizes["variant"],
                   num_prototypes=sizes["num_prototypes"], dim=sizes["dim"], hidden=sizes["hidden"])
    head.load_state_dict(torch.load(Path(directory) / "head.pt", weights_only=True))
    return head.eval(), config


def add_user(directory: str, user: str, logits: Tensor, tokenizer: Any = None) -> Path:
    """Append a fitted user's mixture logits [K] to an export (head.pt, pal.json, users/<user>); returns its judge dir."""
    head, config = load(directory)
    if user in config["users"]:
        raise ValueError(f"user {user!r} is already in {directory}")
    grown = PALHead(config["head"]["embedding_dim"], len(config["users"]) + 1, variant=head.variant,
                    num_prototypes=head.num_prototypes, dim=head.dim, hidden=config["head"]["hidden"])
    state = head.state_dict()
    state["user_logits"] = torch.cat([state["user_logits"], logits.reshape(1, -1).to(state["user_logits"])])
    grown.load_state_dict(state)
    info = {k: v for k, v in config.items() if k not in ("head", "users")}
    save(grown, [*config["users"], user], directory, info, tokenizer)
    return Path(directory) / "users" / user


def is_user_judge(path: str) -> bool:
    """A per-user PAL judge directory (`<export>/users/<user_id>`)."""
    return (Path(path) / "pal_user.json").is_file()


def score_user(judge_dir: str, prompts: Sequence[str], responses: Sequence[str]) -> List[float]:
    """The user's PAL reward of each (prompt text, response text), embedded as training embedded them."""
    from framework.model.embedding import mean_pooler, pair_embeddings
    from framework.objectives import build_objective

    user = json.loads((Path(judge_dir) / "pal_user.json").read_text())
    head, config = load(str((Path(judge_dir) / user["export"]).resolve()))
    tokenizer, pool = mean_pooler(config["encoder"])
    rows = [{"prompt": p, "prompt_is_chat": False, "responses": [r]} for p, r in zip(prompts, responses)]
    prompt_vectors, response_vectors = pair_embeddings(tokenizer, pool, rows, config["max_length"])
    objective = build_objective("pal_reward", **config["objective"])
    users = torch.full((len(rows),), config["users"].index(user["user"]), dtype=torch.long)
    data = {"prompts": prompt_vectors, "responses": response_vectors, "users": users}
    return rewards(head, objective, data)[:, 0].tolist()
