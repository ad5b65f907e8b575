"""PRO's data side: train (or reuse) the orchestrator adapter and write each row's prompt weights into the store.

`add_prompt_weights` writes a new store version with `prompt_weights` [M] (the adapter's w(x), rounded to 2
decimals so the loss uses exactly the weights written in the prompt) and `context_prompt_ids` (the prompt with the
weights line, see framework/model/orchestrator.py), recording the adapter's path and fingerprint in the manifest.
The adapter is light, so this runs on the driver, before Ray starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


def add_prompt_weights(store_path: str, adapter: str, tokenizer_path: str, max_prompt_length: Optional[int],
                       batch_size: int = 64, random_share: float = 0.0, seed: int = 0) -> Any:
    """The store's current version, or a new one holding the adapter's per-prompt weights (reused when the store
    already holds weights from this very adapter, tokenizer and options). A seeded `random_share` of rows gets a
    uniform random point of the simplex instead (RiC-style curriculum): adapter weights are a function of the
    prompt, so without them a policy can follow the prompt and ignore the weights line."""
    import pyarrow as pa
    import torch
    from tqdm import tqdm

    from framework.model.orchestrator import LoadedOrchestrator, context_prompt_ids, prompt_text, round_weights
    from framework.store import add_columns, open_store
    from framework.store.errors import StoreError
    from framework.store.tokenize import load_tokenizer, tokenizer_fingerprint

    version = open_store(store_path)
    orchestrator = LoadedOrchestrator(adapter)
    wanted = {"adapter": orchestrator.path, "fingerprint": orchestrator.fingerprint(),
              "tokenizer": tokenizer_fingerprint(tokenizer_path)["sha256"], "max_prompt_length": max_prompt_length,
              "random_share": random_share, "seed": seed}
    if version.manifest.get("orchestrator") == wanted and "prompt_weights" in version.columns:
        return version
    cols = version.table(columns=["prompt", "prompt_is_chat", "prompt_ids", "objective_names"]).to_pydict()
    names = cols["objective_names"][0] if cols["objective_names"] else None
    if list(names or []) != orchestrator.names:
        raise StoreError(f"{store_path} has objectives {names} but the adapter {adapter} was trained for "
                         f"{orchestrator.names}", "train the adapter on a store with the same objectives, in the same order")
    tokenizer = load_tokenizer(tokenizer_path)
    texts = [prompt_text(p, c) for p, c in zip(cols["prompt"], cols["prompt_is_chat"])]
    weights, context = [], []
    generator = torch.Generator().manual_seed(seed)
    randomised = torch.rand(len(texts), generator=generator) < random_share
    uniform = -(1.0 - torch.rand(len(texts), len(names), generator=generator)).log()  # Dirichlet(1): normalised Exp(1)
    for start in tqdm(range(0, len(texts), batch_size), desc="prompt weights", unit="batch"):
        for i, w in enumerate(orchestrator.weights(texts[start:start + batch_size]).tolist(), start):
            rounded = round_weights((uniform[i] / uniform[i].sum()).tolist() if randomised[i] else w)
            weights.append(rounded)
            context.append(context_prompt_ids(tokenizer, names, rounded, cols["prompt_ids"][i], max_prompt_length))
    columns = {"prompt_weights": pa.array(weights, pa.list_(pa.float64())),
               "context_prompt_ids": pa.array(context, pa.list_(pa.int32()))}
    return add_columns(version, columns, note=f"orchestrator prompt weights from {adapter}",
                       extra_manifest={"orchestrator": wanted})


def prepare(objective: Any, train_store: str, eval_store: Optional[str], tokenizer_path: str, output_dir: str,
            max_prompt_length: Optional[int], seed: int) -> tuple:
    """(train store, eval store) with prompt weights from `objective.adapter`, or from an adapter trained here on
    the training store (reused when `<output_dir>/orchestrator` was trained on these very rows)."""
    import json

    from framework.model.orchestrator import rows_fingerprint, train_orchestrator
    from framework.store import open_store

    adapter = objective.adapter
    if adapter is None:
        adapter = str(Path(output_dir) / "orchestrator")
        info_file = Path(adapter) / "orchestrator.json"
        trained_on = json.loads(info_file.read_text()).get("rows_fingerprint") if info_file.exists() else None
        rows = open_store(train_store).table(columns=["row_id"]).column("row_id").to_pylist()
        if trained_on != rows_fingerprint(rows):
            log.info("training the orchestrator adapter on %s", train_store)
            train_orchestrator(train_store, adapter, encoder=objective.adapter_encoder, temperature=objective.temperature,
                               epochs=objective.adapter_epochs, lr=objective.adapter_lr, seed=seed)
    train_store = str(add_prompt_weights(train_store, adapter, tokenizer_path, max_prompt_length,
                                         random_share=objective.random_weights if objective.in_context else 0.0,
                                         seed=seed).path)
    if eval_store is not None:
        eval_store = str(add_prompt_weights(eval_store, adapter, tokenizer_path, max_prompt_length).path)
    return train_store, eval_store
