"""HelpSteer2-style sources: one input row per response, grouped by prompt into multi rows of two responses.

A source is grouped when its first object row (after `--map`) has `response` and no column of another
convention. Grouping needs every row of a prompt, so one source's valid rows are held in memory (about the
size of the file: fine for HelpSteer2's ~20k rows; pre-group larger files into our `responses` +
`objective_scores` JSONL). Runs in the build's main process; tokenisation stays in the workers.
Every input row still ends in exactly one place: a grouped store row, or its own line of rejects.jsonl.
"""

from __future__ import annotations

from itertools import chain, islice
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from framework.store.errors import StoreError
from framework.store.normalize import (Reject, ScoredResponse, apply_column_map, is_scored_response, parse_raw,
                                       scored_response)
from framework.store.sources import RawRow

HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
PEEK_ROWS = 100  # rows looked at to find the first object row that decides the source's convention


class GroupedRow(NamedTuple):
    """A RawRow value standing for the input rows at `lines`.

    Without `reject`: `row` is the multi row they form (our own convention, columns already mapped).
    With `reject`: it applies to each of those lines, and `row` is what rejects.jsonl previews.
    """

    lines: List[int]
    row: Any
    reject: Optional[Reject] = None


def _objectives(first: Mapping[str, Any], objectives: Optional[Sequence[str]], path: str) -> List[str]:
    names = list(objectives) if objectives else [a for a in HELPSTEER2_ATTRIBUTES if a in first]
    if not names:
        raise StoreError(f"{path}: rows have prompt + response but none of the HelpSteer2 attribute columns "
                         f"({', '.join(HELPSTEER2_ATTRIBUTES)})",
                         "name the score columns: `alignray store build --objectives COL,COL ...`")
    return names


def _first_scored(head: List[RawRow], column_map: Mapping[str, str]) -> Optional[Dict[str, Any]]:
    """The first object row of `head` (mapped) if it is HelpSteer2-shaped, else None."""
    for raw in head:
        parsed = parse_raw(raw.value)
        if not isinstance(parsed, Reject):
            row = apply_column_map(parsed, column_map)
            return row if is_scored_response(row) else None
    return None


def _group(path: str, names: List[str], members: List[Tuple[int, ScoredResponse]]) -> RawRow:
    """One multi row from a prompt's two responses (input order); a reject for each row otherwise."""
    lines = [line for line, _ in members]
    preview = {"prompt": members[0][1].prompt, "lines": lines}
    if len(members) == 1:
        reject = Reject("response", "too_few_responses", "the prompt's only valid response; multi rows need 2")
    elif len(members) > 2:
        reject = Reject("response", "too_many_responses",
                        f"{len(members)} responses for this prompt (lines {lines}); multi rows pair exactly 2: "
                        "split them into pairs upstream")
    else:
        row = {"prompt": members[0][1].prompt, "responses": [m.response for _, m in members],
               "objective_names": names, "objective_scores": [m.scores for _, m in members]}
        return RawRow(path, lines[0], GroupedRow(lines, row))
    return RawRow(path, lines[0], GroupedRow(lines, preview, reject))


def _scored(raw: RawRow, column_map: Mapping[str, str], names: List[str],
            strict: bool) -> Union[None, ScoredResponse, Reject]:
    """None for a row that is not HelpSteer2-shaped (or not JSON): the usual path validates it."""
    parsed = parse_raw(raw.value)
    if isinstance(parsed, Reject):
        return None
    row = apply_column_map(parsed, column_map)
    if not is_scored_response(row):
        return None
    extra = [a for a in HELPSTEER2_ATTRIBUTES if strict and a in row and a not in names]
    if extra:
        return Reject(extra[0], "objective_mismatch", f"the source's first row has objectives {names}")
    return scored_response(row, names)


def group_rows(rows: Iterator[RawRow], column_map: Optional[Mapping[str, str]] = None,
               objectives: Optional[Sequence[str]] = None) -> Iterator[RawRow]:
    """The rows of one source; HelpSteer2-style sources come out grouped by prompt (`GroupedRow` values)."""
    column_map = column_map or {}
    head = list(islice(rows, PEEK_ROWS))
    first = _first_scored(head, column_map)
    if first is None:
        yield from chain(head, rows)
        return
    path = head[0].file
    names = _objectives(first, objectives, path)
    groups: Dict[str, List[Tuple[int, ScoredResponse]]] = {}
    for raw in chain(head, rows):
        result = _scored(raw, column_map, names, strict=not objectives)
        if result is None:  # another convention in the same file, or broken JSON: validated as usual
            yield raw
        elif isinstance(result, Reject):
            yield RawRow(raw.file, raw.line, GroupedRow([raw.line], raw.value, result))
        else:
            groups.setdefault(result.prompt_key, []).append((raw.line, result))
    for members in groups.values():
        yield _group(path, names, members)
