"""Tokenise canonical examples into the store's id columns, with the model's tokenizer and chat template.

Rules: a chat prompt goes through the tokenizer's chat template (with the generation prompt) when it has
one, else it is rendered as "role: content" lines; a text prompt is encoded as is, with BOS prepended when
the tokenizer defines one and adds it by itself. Responses are encoded without special tokens and end with
EOS when the tokenizer has one. Over-long prompts keep their last tokens (nearest the response), over-long
responses their first ones; with truncation off such rows are rejected instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from framework.store.errors import StoreError
from framework.store.normalize import Reject

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def resolve_tokenizer_path(path: Optional[str]) -> str:
    """`path`, checked to be a local directory. The store stays data-only: callers pick any default
    (the CLI passes the built-in demo tokenizer)."""
    if not path:
        raise StoreError("no tokenizer given", "pass a local tokenizer directory (--tokenizer DIR)")
    if not Path(path).is_dir():
        raise StoreError(f"{path}: tokenizer directory not found")
    return path


def load_tokenizer(path: str) -> Any:
    """AutoTokenizer over a local directory (never the hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad directory
        raise StoreError(f"{path}: cannot load tokenizer ({exc.__class__.__name__}: {str(exc)[:120]})") from None


def tokenizer_fingerprint(path: str) -> Dict[str, Any]:
    """sha256 over the tokenizer's defining files: equal fingerprints tokenise identically."""
    digest = hashlib.sha256()
    files = [f for f in TOKENIZER_FILES if (Path(path) / f).is_file()]
    for name in files:
        digest.update(name.encode() + b"\0" + (Path(path) / name).read_bytes())
    tokenizer = load_tokenizer(path)
    return {"path": str(Path(path).resolve()), "sha256": digest.hexdigest(), "files": files,
            "class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "has_chat_template": bool(getattr(tokenizer, "chat_template", None))}


class Encoder:
    """Holds one tokenizer (one per worker process) and turns examples into id lists."""

    def __init__(self, path: str, *, max_prompt_tokens: Optional[int], max_response_tokens: Optional[int],
                 truncate: bool) -> None:
        self.tokenizer = load_tokenizer(path)
        self.max_prompt, self.max_response, self.truncate = max_prompt_tokens, max_response_tokens, truncate
        bos = self.tokenizer.bos_token_id
        probe = self.tokenizer("probe")["input_ids"]
        self.bos = [bos] if bos is not None and probe[:1] == [bos] else []
        self.eos = [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))

    def _render(self, messages: Optional[list], text: str) -> Tuple[str, bool]:
        """(text to encode, whether BOS must be prepended)."""
        if messages is None:
            return text, True
        if self.has_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:", True

    def _encode_prompts(self, rendered: Sequence[Tuple[str, bool]]) -> List[List[int]]:
        ids = self._batch([text for text, _ in rendered])
        return [(self.bos + row if add_bos else row) for row, (_, add_bos) in zip(ids, rendered)]

    def _batch(self, texts: Sequence[str]) -> List[List[int]]:
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # The Rust tokenizer directly: same ids as tokenizer(texts, add_special_tokens=False), without
            # computing offsets or building Python-side encodings we would throw away.
            return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _fit(self, ids: List[int], limit: Optional[int], keep_end: bool) -> Tuple[List[int], bool]:
        if limit is None or len(ids) <= limit:
            return ids, False
        return (ids[-limit:] if keep_end else ids[:limit]), True

    def encode(self, examples: List[Dict[str, Any]]) -> List[Any]:
        """Per example: the example with `prompt_ids`, `response_ids`, ... filled in, or a Reject."""
        prompts = self._encode_prompts([self._render(e["prompt_messages"], e["prompt"]) for e in examples])
        flat = [r for e in examples for r in e["responses"]]
        responses = [ids + self.eos for ids in self._batch(flat)]
        per_prompts = [(e, i, p, m) for e in examples if e["response_prompts"] is not None
                       for i, (p, m) in enumerate(zip(e["response_prompts"], e["response_prompt_messages"]))]
        extra = self._encode_prompts([self._render(m, p) for _, _, p, m in per_prompts])
        extra_by_row: Dict[int, List[List[int]]] = {}
        for (example, _, _, _), ids in zip(per_prompts, extra):
            extra_by_row.setdefault(id(example), []).append(ids)
        out, cursor = [], 0
        for example, prompt_ids in zip(examples, prompts):
            k = len(example["responses"])
            out.append(self._finish(example, prompt_ids, responses[cursor:cursor + k], extra_by_row.get(id(example))))
            cursor += k
        return out

    def _finish(self, example: Dict[str, Any], prompt_ids: List[int], response_ids: List[List[int]],
                response_prompt_ids: Optional[List[List[int]]]) -> Any:
        prompt_ids, cut = self._fit(prompt_ids, self.max_prompt, keep_end=True)
        if cut and not self.truncate:
            return Reject("prompt", "prompt_too_long", f"> {self.max_prompt} tokens")
        fitted = [self._fit(ids, self.max_response, keep_end=False) for ids in response_ids]
        if any(c for _, c in fitted) and not self.truncate:
            return Reject("responses", "response_too_long", f"> {self.max_response} tokens")
        if response_prompt_ids is not None:
            per = [self._fit(ids, self.max_prompt, keep_end=True) for ids in response_prompt_ids]
            if any(c for _, c in per) and not self.truncate:
                return Reject("response_prompts", "prompt_too_long", f"> {self.max_prompt} tokens")
            response_prompt_ids, cut = [ids for ids, _ in per], cut or any(c for _, c in per)
        example = dict(example, prompt_ids=prompt_ids, response_ids=[ids for ids, _ in fitted],
                       response_prompt_ids=response_prompt_ids, truncated=cut or any(c for _, c in fitted))
        return example
