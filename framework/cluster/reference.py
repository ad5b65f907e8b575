"""Stored reference log-probs: fingerprints and the check training does before trusting them."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Tuple

from framework.config import ConfigError
from framework.model.loading import model_fingerprint


def reference_fingerprint(model_path: str, max_length: int, max_prompt_length: int) -> str:
    """Weights + tokenizer + the truncation that shaped the sequences: any change makes stored values stale."""
    weights = model_fingerprint(model_path) or f"hub:{model_path}"
    blob = json.dumps({"weights": weights, "max_length": max_length, "max_prompt_length": max_prompt_length})
    return hashlib.sha256(blob.encode()).hexdigest()


def stored_reference_matches(store: Any, reference_path: str, max_length: int, max_prompt_length: int) -> Tuple[bool, str]:
    """(True, "") when the store carries reference log-probs made by this reference; (False, reason) when it has
    none. A store made by a *different* reference is refused: silently mixing references corrupts the loss."""
    info = store.manifest.get("reference")
    if not info:
        return False, f"store {store.path} has no stored reference log-probs"
    expected = reference_fingerprint(reference_path, max_length, max_prompt_length)
    if info.get("fingerprint") != expected:
        raise ConfigError(
            f"store {store.path} holds reference log-probs from {info.get('model')} (fingerprint "
            f"{str(info.get('fingerprint'))[:12]}, max_length={info.get('max_length')}), which does not match the "
            f"configured reference {reference_path} (fingerprint {expected[:12]}); rebuild them with "
            f"`alignray store add-reference` or set data.use_stored_reference=never"
        )
    return True, ""
