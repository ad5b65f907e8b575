"""Fixtures for the store tests."""

from __future__ import annotations

import pytest
from store_helpers import make_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny byte-level BPE with BOS/EOS and a chat template, saved like a user's tokenizer."""
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))
