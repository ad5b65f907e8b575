"""The Preference Orchestrator's adapter (PRO, arXiv 2511.10656): prompt → objective weights on the simplex.

An HF encoder (any `AutoModel` directory; by default a tiny BERT built offline from a config with the demo
tokenizer), mean-pooled over the prompt's tokens, and a linear head over the M objectives. Trained on a
multi-objective store with KL(w* ‖ f_ψ(x)), w* = softmax(z(r(x, y⁺))/T) (`orchestrator_targets`).

A saved adapter is a directory:
  encoder/            the fine-tuned encoder and its tokenizer (save_pretrained)
  head.pt             the head's state dict
  orchestrator.json   objective names, temperature, the z-score statistics, training options and metrics

Weights in context: a policy trained with `objective=pro` reads its weights as one text line before the prompt,
`[weights topic=0.70 brevity=0.30]` + newline, weights rounded to 2 decimals and summing to 1 (`weights_line`).
The prompt's token ids are BOS (when the tokenizer adds one) + tokens(line) + the prompt's own ids
(`context_prompt_ids`); at deployment build the prompt the same way, with the adapter's or your own weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

log = logging.getLogger(__name__)
DEMO_ENCODER_VERSION = "v1"


def round_weights(weights: Sequence[float], decimals: int = 2) -> List[float]:
    """Weights rounded to `decimals` that still sum to 1 (the rounding remainder goes to the largest)."""
    scale = 10 ** decimals
    units = [round(float(w) * scale) for w in weights]
    units[max(range(len(units)), key=lambda i: weights[i])] += scale - sum(units)
    return [u / scale for u in units]


def weights_line(names: Sequence[str], weights: Sequence[float]) -> str:
    """The documented in-context format: `[weights a=0.70 b=0.30]` and a newline."""
    return "[weights " + " ".join(f"{n}={w:.2f}" for n, w in zip(names, weights)) + "]\n"


def context_prompt_ids(tokenizer: Any, names: Sequence[str], weights: Sequence[float], prompt_ids: Sequence[int],
                       max_prompt_length: Optional[int] = None) -> List[int]:
    """BOS + tokens(weights line) + the prompt's ids without its BOS; when too long, the prompt loses its first
    tokens (as the store truncates prompts), never the weights line."""
    line = _line_ids(tokenizer, weights_line(names, weights))
    bos = tokenizer.bos_token_id
    head = [bos] if bos is not None and list(prompt_ids[:1]) == [bos] else []
    body = list(prompt_ids[len(head):])
    if max_prompt_length is not None:
        room = max(0, max_prompt_length - len(head) - len(line))
        body = body[len(body) - room:] if room else []
    return head + line + body


def _line_ids(tokenizer: Any, line: str) -> List[int]:
    """Token ids of a weights line, cached on the tokenizer: rows share a few distinct lines (2-decimal weights)."""
    cache = tokenizer.__dict__.setdefault("_alignray_weight_lines", {})
    if line not in cache:
        cache[line] = tokenizer(line, add_special_tokens=False)["input_ids"]
    return cache[line]


def prompt_text(prompt: str, is_chat: bool) -> str:
    """What the encoder reads: the prompt, or a chat prompt's messages as `role: content` lines."""
    if not is_chat:
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in json.loads(prompt))


def demo_encoder_path() -> str:
    """A tiny BERT encoder (2 layers, hidden 64) with the demo tokenizer, built once into the cache."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from framework.model.demo import cache_dir, demo_tokenizer_path

    target = cache_dir() / f"demo-encoder-{DEMO_ENCODER_VERSION}"
    if (target / "config.json").exists():
        return str(target)
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_path())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-encoder-"))
    BertModel(config).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # built concurrently by another process: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


class Orchestrator(torch.nn.Module):
    """f_ψ(x): log-weights [B, M] from the encoder's mean-pooled last hidden states."""

    def __init__(self, encoder: torch.nn.Module, num_objectives: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, num_objectives)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.log_softmax(self.head(pooled), dim=-1)


class LoadedOrchestrator:
    """A saved adapter, ready to give weights for prompts."""

    def __init__(self, path: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        from framework.errors import UserError

        root = Path(path)
        if not (root / "orchestrator.json").exists():
            raise UserError(f"{path} is not an orchestrator adapter (no orchestrator.json)",
                            "train one with `alignray orchestrate train --data STORE --out DIR`")
        self.path = str(root)
        self.info = json.loads((root / "orchestrator.json").read_text())
        self.names: List[str] = list(self.info["objective_names"])
        self.tokenizer = AutoTokenizer.from_pretrained(root / "encoder")
        self.model = Orchestrator(AutoModel.from_pretrained(root / "encoder"), len(self.names))
        self.model.head.load_state_dict(torch.load(root / "head.pt", map_location="cpu", weights_only=True))
        self.model.eval()

    @torch.no_grad()
    def weights(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """w(x) [N, M] for prompt texts (chat prompts rendered with `prompt_text`)."""
        out = [self.model(**encode(self.tokenizer, prompts[i:i + batch_size], self.info["max_length"])).exp()
               for i in range(0, len(prompts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.names))

    def fingerprint(self) -> str:
        return adapter_fingerprint(self.path)


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> Dict[str, torch.Tensor]:
    """Padded ids and mask; long prompts keep their end (the question is usually last)."""
    tokenizer.truncation_side = "left"
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def adapter_fingerprint(path: str) -> str:
    """sha256 over the adapter's files (names and bytes)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def training_targets(store_path: str, temperature: float) -> Dict[str, Any]:
    """Prompts, targets w* [N, M] and the z-score statistics from a multi-objective store."""
    from framework.objectives.pro import orchestrator_targets, preferred_index
    from framework.store import open_store

    version = open_store(store_path)
    table = version.table(columns=["row_id", "prompt", "prompt_is_chat", "objective_names", "objective_scores", "scores"])
    cols = table.to_pydict()
    names = cols["objective_names"][0] if cols["objective_names"] else None
    if not names or any(s is None for s in cols["objective_scores"]):
        from framework.store.errors import StoreError

        raise StoreError(f"{store_path}: the orchestrator needs multi-objective rows (objective_scores)",
                         "build the store with --kind multi")
    scores = torch.tensor(cols["objective_scores"], dtype=torch.float64)  # [N, K, M]
    flat = scores.reshape(-1, scores.shape[-1])
    mean, std = flat.mean(0), flat.std(0).nan_to_num(1.0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    overall = torch.tensor([s if s is not None else [float("nan")] * scores.shape[1] for s in cols["scores"]],
                           dtype=torch.float64)
    preferred = preferred_index(scores, overall, mean, std)
    targets = orchestrator_targets(scores[torch.arange(len(preferred)), preferred], mean, std, temperature)
    return {"prompts": [prompt_text(p, c) for p, c in zip(cols["prompt"], cols["prompt_is_chat"])],
            "targets": targets.float(), "names": list(names), "mean": mean.tolist(), "std": std.tolist(),
            "labelled": int((~torch.isnan(overall).any(-1)).sum()), "store": str(version.path),
            "rows_fingerprint": rows_fingerprint(cols["row_id"])}


def rows_fingerprint(row_ids: Sequence[str]) -> str:
    """sha256 of the row ids in order: the same rows whatever columns later store versions add."""
    return hashlib.sha256("\n".join(row_ids).encode()).hexdigest()


def train_orchestrator(store_path: str, out: str, *, encoder: Optional[str] = None, temperature: float = 0.1,
                       epochs: int = 3, lr: float = 1e-3, batch_size: int = 32, max_length: int = 128, seed: int = 0,
                       holdout: float = 0.1) -> Dict[str, Any]:
    """Fit the adapter on `store_path` and save it to `out` (atomically: temp dir + rename). Returns its info,
    with held-out KL against a constant predictor (the mean target), which says whether prompts carry signal."""
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    data = training_targets(store_path, temperature)
    encoder_path = encoder or demo_encoder_path()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    model = Orchestrator(AutoModel.from_pretrained(encoder_path), len(data["names"]))
    n = len(data["prompts"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(n * holdout) if n >= 20 else 0
    held, train = order[:cut], order[cut:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed + 1)
    model.train()
    steps = epochs * -(-len(train) // batch_size)
    with tqdm(total=steps, desc="orchestrator", unit="step") as bar:
        for _ in range(epochs):
            perm = torch.tensor(train)[torch.randperm(len(train), generator=generator)].tolist()
            for start in range(0, len(perm), batch_size):
                rows = perm[start:start + batch_size]
                loss = _kl(model, tokenizer, data, rows, max_length).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(1)
                bar.set_postfix(kl=f"{loss.item():.4f}")
    model.eval()
    metrics = _held_out_metrics(model, tokenizer, data, held, train, max_length)
    info = {"objective_names": data["names"], "temperature": temperature, "mean": data["mean"], "std": data["std"],
            "max_length": max_length, "encoder": encoder_path, "store": data["store"], "rows": n,
            "rows_fingerprint": data["rows_fingerprint"],
            "rows_with_overall_label": data["labelled"], "epochs": epochs, "lr": lr, "seed": seed, "metrics": metrics}
    _save(model, tokenizer, info, Path(out))
    log.info("orchestrator: held-out KL %.4f (constant predictor %.4f), top-1 agreement %.3f -> %s",
             metrics["heldout_kl"], metrics["heldout_kl_constant"], metrics["heldout_top1"], out)
    return info


def _kl(model: Orchestrator, tokenizer: Any, data: Dict[str, Any], rows: Sequence[int], max_length: int) -> torch.Tensor:
    """KL(w* ‖ f_ψ(x)) per row."""
    log_f = model(**encode(tokenizer, [data["prompts"][i] for i in rows], max_length))
    return kl_divergence(data["targets"][list(rows)], log_f)


def kl_divergence(target: torch.Tensor, log_f: torch.Tensor) -> torch.Tensor:
    return (target * (target.clamp_min(1e-12).log() - log_f)).sum(-1)


@torch.no_grad()
def _held_out_metrics(model: Orchestrator, tokenizer: Any, data: Dict[str, Any], held: List[int], train: List[int],
                      max_length: int) -> Dict[str, float]:
    if not held:
        return {"heldout_rows": 0, "heldout_kl": float("nan"), "heldout_kl_constant": float("nan"), "heldout_top1": float("nan")}
    target = data["targets"][held]
    log_f = torch.cat([model(**encode(tokenizer, [data["prompts"][j] for j in held[i:i + 64]], max_length))
                       for i in range(0, len(held), 64)])
    kl_constant = kl_divergence(target, data["targets"][train].mean(0).log())
    top1 = (log_f.argmax(-1) == target.argmax(-1)).float().mean()
    return {"heldout_rows": len(held), "heldout_kl": float(kl_divergence(target, log_f).mean()),
            "heldout_kl_constant": float(kl_constant.mean()), "heldout_top1": float(top1)}


def _save(model: Orchestrator, tokenizer: Any, info: Dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        model.encoder.save_pretrained(tmp / "encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "encoder")
        torch.save(model.head.state_dict(), tmp / "head.pt")
        (tmp / "orchestrator.json").write_text(json.dumps(info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
