"""Built-in demo assets, made offline: a byte-level BPE tokenizer (shipped in the package) and a tiny
Llama-style causal LM built from a config and saved as a local HF directory.

The model directory is loaded back through the same `from_pretrained` code path a user's model takes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TOKENIZER_DIR = ASSETS / "demo_tokenizer"
DEMO_MODEL_VERSION = "v1"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def cache_dir() -> Path:
    """Where generated assets live: $ALIGNRAY_CACHE, else ~/.cache/alignray."""
    return Path(os.environ.get("ALIGNRAY_CACHE", Path.home() / ".cache" / "alignray"))


def demo_tokenizer_path() -> str:
    """Path of the shipped demo tokenizer directory."""
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        raise FileNotFoundError(f"demo tokenizer missing at {TOKENIZER_DIR}; run `python -m framework.model.demo`")
    return str(TOKENIZER_DIR)


def train_demo_tokenizer(out_dir: Path, vocab_size: int = 1024) -> Path:
    """Train the byte-level BPE on the demo corpus (how the shipped file was made)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from framework.demo_data import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(corpus()) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_llama(out_dir: Path, tokenizer_path: str, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """Build a tiny Llama from a config with fixed seed and `save_pretrained` it (safetensors) with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def demo_model_path() -> str:
    """The tiny demo model directory, built once into the cache (atomically: temp dir + rename)."""
    target = cache_dir() / f"demo-model-{DEMO_MODEL_VERSION}"
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=target.parent))
    try:
        build_tiny_llama(tmp, demo_tokenizer_path())
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


if __name__ == "__main__":
    train_demo_tokenizer(TOKENIZER_DIR)
    print(f"wrote {TOKENIZER_DIR}")
