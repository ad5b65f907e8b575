"""Helpers for the store tests: a tiny tokenizer trained on the spot, JSONL writers, shared-data paths."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
HH_RLHF = SHARED / "data" / "hh-rlhf" / "harmless-base-test-part.jsonl.gz"
SENTENCES = [
    "What colour is the sky? It is blue. It is green.",
    "Human: tell me a joke. Assistant: Why did the chicken cross the road?",
    "The quick brown fox jumps over the lazy dog.",
    "Rank these answers from best to worst, please.",
]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def make_tokenizer(out_dir: Path, *, chat_template: bool = True, bos: bool = True) -> str:
    """A byte-level BPE (any text encodes) with BOS/EOS and, optionally, a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    if bos:  # a tokenizer that adds BOS by itself, like Llama's
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   chat_template=TEMPLATE if chat_template else None)
    fast.save_pretrained(out_dir)
    return str(out_dir)


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    """Rows that are str are written verbatim (for deliberately broken lines), others as JSON."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path
