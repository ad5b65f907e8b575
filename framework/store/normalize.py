"""Turn one raw input row into a canonical example of one feedback kind, or a reject with a reason.

Recognised conventions (TRL's, by default; `column_map` renames source columns first):
  pairwise  prompt + chosen + rejected (optional score_chosen/score_rejected); or only chosen + rejected,
            whole dialogues sharing a prefix (the implicit prompt); or chosen_prompt/rejected_prompt (DOVE)
  ranked    prompt + responses (alias completions) + optional scores (higher is better)
  binary    prompt + completion + label (boolean-like)
  multi     prompt + responses or chosen/rejected + objective_scores [K][M] (+ objective_names),
            or + preferred {objective: index of the preferred response};
            or PKU-SafeRLHF style: prompt + response_0, response_1 + <objective>_response_id columns
            (`better_response_id`, `safer_response_id`: objectives "better", "safer"; rename with --map);
            or HelpSteer2 style: one row per response (prompt + response + numeric attribute columns), which
            framework/store/grouping.py groups by prompt before these functions see it (`scored_response`)
A multi row from chosen/rejected keeps the overall human preference as `scores` [1.0, 0.0].
Prompts and responses may be text or chat-message lists ({"role", "content"} dicts).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

from framework.store.implicit import split_implicit_chat, split_implicit_text

Messages = List[Dict[str, str]]
ALIASES = {"completions": "responses", "rewards": "scores"}
TRUE_WORDS = {"true", "yes", "1", "desirable", "good"}
FALSE_WORDS = {"false", "no", "0", "undesirable", "bad"}


class Reject(NamedTuple):
    """Why a row cannot be stored: `field` is the offending input field (None for the row as a whole)."""

    field: Optional[str]
    reason: str
    detail: str = ""


class Invalid(Exception):
    """Raised inside the checks below; carries the Reject."""

    def __init__(self, field: Optional[str], reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reject = Reject(field, reason, detail)


def is_chat(value: Any) -> bool:
    """A non-empty list of dicts that each carry a role (TRL's conversational format)."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _messages(field: str, value: List[Any]) -> Messages:
    out = []
    for message in value:
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise Invalid(field, "bad_message", "every message needs string 'role' and 'content'")
        out.append({"role": message["role"], "content": message["content"]})
    if not any(m["content"].strip() for m in out):
        raise Invalid(field, "empty")
    return out


def _text(field: str, value: Any) -> str:
    if value is None:
        raise Invalid(field, "null")
    if not isinstance(value, str):
        raise Invalid(field, "not_text", type(value).__name__)
    if not value.strip():
        raise Invalid(field, "empty")
    return value


def _prompt(field: str, value: Any) -> Union[str, Messages]:
    return _messages(field, value) if is_chat(value) else _text(field, value)


def _response(field: str, value: Any) -> str:
    """A response is text, or a chat list holding exactly one assistant message."""
    if is_chat(value):
        messages = _messages(field, value)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise Invalid(field, "not_single_assistant_message")
        value = messages[0]["content"]
    return _text(field, value)


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(field, "not_a_number", repr(value)[:40])
    if not math.isfinite(value):
        raise Invalid(field, "non_finite_score", repr(value))
    return float(value)


def _numbers(field: str, value: Any, length: int) -> List[float]:
    if not isinstance(value, list):
        raise Invalid(field, "not_a_list")
    if len(value) != length:
        raise Invalid(field, "length_mismatch", f"{len(value)} values for {length} responses")
    return [_number(field, v) for v in value]


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise Invalid("label", "not_boolean", repr(value)[:40])


def _require(row: Mapping[str, Any], field: str) -> Any:
    if field not in row:
        raise Invalid(field, "missing")
    return row[field]


def infer_kind(row: Mapping[str, Any]) -> Optional[str]:
    """The feedback kind a row's columns announce, or None when they match no convention."""
    has_pair = "chosen" in row or "rejected" in row
    if "objective_scores" in row or "preferred" in row or _indexed_preferences(row):
        return "multi"
    if "responses" in row:
        return "ranked"
    if has_pair or "chosen_prompt" in row:
        return "pairwise"
    if "completion" in row or "label" in row:
        return "binary"
    return None


def _pair(row: Mapping[str, Any]) -> Tuple[Union[str, Messages], List[str], Optional[List[Any]]]:
    """(prompt, [chosen, rejected], per-response prompts or None) for the pairwise column conventions."""
    chosen, rejected = _require(row, "chosen"), _require(row, "rejected")
    if "chosen_prompt" in row or "rejected_prompt" in row:  # DOVE: a different prompt per response
        prompts = [_prompt("chosen_prompt", _require(row, "chosen_prompt")),
                   _prompt("rejected_prompt", _require(row, "rejected_prompt"))]
        return prompts[0], [_response("chosen", chosen), _response("rejected", rejected)], prompts
    # TRL extracts the prompt when none is given, or when a text prompt sits beside whole chat dialogues
    # (datasets that add a plain `prompt` column to implicit-prompt conversations).
    if "prompt" not in row or (isinstance(row["prompt"], str) and is_chat(chosen) and len(chosen) > 1):
        if chosen is None or rejected is None:
            raise Invalid("chosen" if chosen is None else "rejected", "null")
        if is_chat(chosen) and is_chat(rejected):
            prompt, chosen, rejected = split_implicit_chat(chosen, rejected)
        elif isinstance(chosen, str) and isinstance(rejected, str):
            prompt, chosen, rejected = split_implicit_text(chosen, rejected)
        else:
            raise Invalid("chosen", "not_text", "implicit prompt needs two strings or two message lists")
        if not prompt:
            raise Invalid("prompt", "no_shared_prompt", "chosen and rejected share no prefix")
        return _prompt("prompt", prompt), [_response("chosen", chosen), _response("rejected", rejected)], None
    return _prompt("prompt", row["prompt"]), [_response("chosen", chosen), _response("rejected", rejected)], None


def _ranked(row: Mapping[str, Any]) -> Tuple[Union[str, Messages], List[str], Optional[List[Any]]]:
    prompt = _prompt("prompt", _require(row, "prompt"))
    responses = _require(row, "responses")
    if not isinstance(responses, list):
        raise Invalid("responses", "not_a_list" if responses is not None else "null")
    texts = [_response("responses", r) for r in responses]
    prompts = None
    if row.get("response_prompts") is not None:
        prompts = row["response_prompts"]
        if not isinstance(prompts, list) or len(prompts) != len(texts):
            raise Invalid("response_prompts", "length_mismatch")
        prompts = [_prompt("response_prompts", p) for p in prompts]
    return prompt, texts, prompts


RESPONSE_ID_SUFFIX = "_response_id"


def _indexed_preferences(row: Mapping[str, Any]) -> List[str]:
    """The `<objective>_response_id` columns of a PKU-SafeRLHF-style row (with response_0, response_1)."""
    if "response_0" not in row:
        return []
    return sorted(k for k in row if isinstance(k, str) and k.endswith(RESPONSE_ID_SUFFIX) and len(k) > len(RESPONSE_ID_SUFFIX))


def _indexed(row: Mapping[str, Any]) -> Tuple[Union[str, Messages], List[str], Dict[str, int]]:
    """(prompt, [response_0, response_1, ...], {objective: preferred index}) of a PKU-SafeRLHF-style row."""
    prompt = _prompt("prompt", _require(row, "prompt"))
    texts, k = [], 0
    while f"response_{k}" in row:
        texts.append(_response(f"response_{k}", row[f"response_{k}"]))
        k += 1
    preferred = {}
    for column in _indexed_preferences(row):
        index = row[column]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < k:
            raise Invalid(column, "bad_index", f"{index!r} is not a response index 0..{k - 1}")
        preferred[column[: -len(RESPONSE_ID_SUFFIX)]] = index
    return prompt, texts, preferred


def _objectives(row: Mapping[str, Any], k: int) -> Tuple[List[str], List[List[float]]]:
    """Per-objective scores [K][M]; `preferred` {objective: index} becomes one-hot scores."""
    if "preferred" in row:
        preferred = row["preferred"]
        if not isinstance(preferred, dict) or not preferred:
            raise Invalid("preferred", "not_a_mapping")
        names = sorted(preferred)
        for name in names:
            index = preferred[name]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < k:
                raise Invalid("preferred", "bad_index", f"{name}: {index!r}")
        return names, [[1.0 if preferred[n] == i else 0.0 for n in names] for i in range(k)]
    table = _require(row, "objective_scores")
    if not isinstance(table, list) or len(table) != k:
        raise Invalid("objective_scores", "length_mismatch", f"need one score list per response ({k})")
    width = len(table[0]) if isinstance(table[0], list) else 0
    if width < 1:
        raise Invalid("objective_scores", "not_a_list", "each response needs a non-empty list of scores")
    scores = [_numbers("objective_scores", r, width) for r in table]
    names = row.get("objective_names") or [f"objective_{m}" for m in range(width)]
    if not isinstance(names, list) or len(names) != width or not all(isinstance(n, str) for n in names):
        raise Invalid("objective_names", "length_mismatch")
    return names, scores


def _user_id(row: Mapping[str, Any]) -> Optional[str]:
    """The annotator's id as text (integer ids too), None when absent or null; other values are rejected."""
    value = row.get("user_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid("user_id", "not_text", type(value).__name__)
    if isinstance(value, str) and not value.strip():
        raise Invalid("user_id", "empty")
    return str(value)


def _serialise(prompt: Union[str, Messages]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def _example(row: Mapping[str, Any], kind: str) -> Dict[str, Any]:
    if kind == "binary":
        prompt, responses, prompts = _prompt("prompt", _require(row, "prompt")), [
            _response("completion", _require(row, "completion"))], None
    elif "responses" in row:
        prompt, responses, prompts = _ranked(row)
    elif kind == "multi" and _indexed_preferences(row):
        prompt, responses, preferred = _indexed(row)
        row, prompts = {**row, "preferred": preferred}, None
    else:
        prompt, responses, prompts = _pair(row)
        if kind == "multi" and row.get("scores") is None and "score_chosen" not in row and "score_rejected" not in row:
            row = {**row, "scores": [1.0, 0.0]}  # the overall human label (chosen first), y+ for the orchestrator
    if kind != "binary" and len(responses) < 2:
        raise Invalid("responses", "too_few_responses", f"{len(responses)} < 2")
    if len(set(responses)) < len(responses) and (prompts is None or len({_serialise(p) for p in prompts}) == 1):
        raise Invalid("rejected" if kind == "pairwise" else "responses", "identical_responses")
    example: Dict[str, Any] = {
        "kind": kind, "prompt_is_chat": not isinstance(prompt, str), "prompt": _serialise(prompt),
        "prompt_messages": None if isinstance(prompt, str) else prompt, "responses": responses,
        "scores": None, "label": None, "objective_names": None, "objective_scores": None,
        "response_prompts": None if prompts is None else [_serialise(p) for p in prompts],
        "response_prompt_messages": None if prompts is None else [p if not isinstance(p, str) else None for p in prompts],
        "user_id": _user_id(row),
    }
    if prompts is not None and any(is_chat(p) != example["prompt_is_chat"] for p in prompts):
        raise Invalid("response_prompts", "mixed_chat_and_text")
    if kind == "binary":
        example["label"] = _label(_require(row, "label"))
    if row.get("scores") is not None:
        example["scores"] = _numbers("scores", row["scores"], len(responses))
    elif "score_chosen" in row or "score_rejected" in row:
        example["scores"] = [_number("score_chosen", row.get("score_chosen")),
                             _number("score_rejected", row.get("score_rejected"))]
    if kind == "multi":
        example["objective_names"], example["objective_scores"] = _objectives(row, len(responses))
    return example


def row_id(example: Mapping[str, Any]) -> str:
    """Content hash: the same example always gets the same id, whatever file or line it came from."""
    keys = ("kind", "prompt", "prompt_is_chat", "responses", "scores", "label", "objective_names",
            "objective_scores", "response_prompts")
    values = [example[k] for k in keys]
    if example.get("user_id") is not None:  # two users' labels of one pair are two examples; ids without users unchanged
        values.append(example["user_id"])
    canonical = json.dumps(values, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


class ScoredResponse(NamedTuple):
    """One response of a per-response scored row (HelpSteer2 style), before rows are grouped by prompt."""

    prompt: Union[str, Messages]
    prompt_key: str
    response: str
    scores: List[float]


def is_scored_response(row: Mapping[str, Any]) -> bool:
    """A HelpSteer2-style row: `response` (singular) and no column of another convention."""
    return "response" in row and infer_kind(row) is None


def scored_response(row: Mapping[str, Any], objectives: List[str]) -> Union[ScoredResponse, Reject]:
    """The prompt, response and one finite score per objective column of a HelpSteer2-style row, or a Reject."""
    try:
        prompt = _prompt("prompt", _require(row, "prompt"))
        return ScoredResponse(prompt, _serialise(prompt), _response("response", _require(row, "response")),
                              [_number(name, _require(row, name)) for name in objectives])
    except Invalid as exc:
        return exc.reject


def parse_raw(raw: Union[bytes, Mapping[str, Any]]) -> Union[Dict[str, Any], Reject]:
    """A JSONL line decoded to a dict (table rows pass through), or a Reject."""
    if isinstance(raw, bytes):
        try:
            raw = json.loads(raw)
        except UnicodeDecodeError:
            return Reject(None, "invalid_utf8")
        except ValueError as exc:
            return Reject(None, "invalid_json", str(exc)[:80])
    if not isinstance(raw, dict):
        return Reject(None, "not_an_object", type(raw).__name__)
    return raw


def apply_column_map(raw: Mapping[str, Any], column_map: Optional[Mapping[str, str]]) -> Dict[str, Any]:
    """The row with aliases resolved and `--map COL=FIELD` applied (COL is read *as* FIELD)."""
    row = {ALIASES.get(k, k): v for k, v in raw.items()}
    mapping = {source: field for source, field in (column_map or {}).items() if source in raw}
    for source in set(mapping) - set(mapping.values()):  # read COL *as* FIELD: it no longer counts as itself
        row.pop(ALIASES.get(source, source), None)
    for source, field in mapping.items():
        row[field] = raw[source]
    return row


def normalise(raw: Union[bytes, Mapping[str, Any]], *, kind: Optional[str] = None,
              column_map: Optional[Mapping[str, str]] = None) -> Union[Dict[str, Any], Reject]:
    """Canonical example dict (with `row_id`) or a Reject. `raw` is an undecoded JSONL line or a dict."""
    raw = parse_raw(raw)
    if isinstance(raw, Reject):
        return raw
    row = apply_column_map(raw, column_map)
    inferred = infer_kind(row)
    if inferred is None:
        return Reject(None, "unrecognised_columns", ",".join(sorted(map(str, raw)))[:80])
    if kind is not None and kind != inferred:
        return Reject(None, "kind_mismatch", f"expected {kind}, columns say {inferred}")
    try:
        example = _example(row, inferred)
    except Invalid as exc:
        return exc.reject
    example["row_id"] = row_id(example)
    return example
