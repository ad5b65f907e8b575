"""Deterministic demo preference data with a learnable rule.

Each prompt names a topic ("tell me about fruit"). A *good* response stays on the prompt's topic; a *bad* one
drifts to another topic. Every topic appears equally often in good and bad responses, so the only way to
prefer the chosen answer is to read the prompt: a policy must learn the prompt→topic association.
Good and bad responses have the same number of words, so summed log-probs are not biased by length.

Three shapes of the same rule: pairs (prompt/chosen/rejected), ranked lists (responses with scores = share of
on-topic words) and binary feedback (prompt/completion/label). A fourth, `multi`, adds a second objective that
conflicts with the first: "topic" counts on-topic words (more is better) while "brevity" prefers fewer words, and
covering more of the topic takes more words, so no response wins both on most rows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, Iterator, List

TOPICS: Dict[str, List[str]] = {
    "fruit": "apple banana cherry grape lemon mango melon peach pear plum".split(),
    "animals": "bear cat deer dog fox horse lion mouse otter wolf".split(),
    "weather": "cloud fog frost hail mist rain snow storm sun wind".split(),
    "music": "bass drum flute guitar harp horn piano song tune violin".split(),
    "colors": "amber azure black blue brown green orange pink red white".split(),
    "tools": "axe drill file hammer knife saw screw shovel spade wrench".split(),
    "sports": "golf hockey judo polo rugby ski soccer surf swim tennis".split(),
    "food": "bread butter cheese honey jam pasta rice salt soup stew".split(),
}
PROMPT_TEMPLATES = ["tell me about {t} .", "what do you know about {t} ?", "say something on {t} .", "talk about {t} please ."]
RESPONSE_WORDS = 6


def _response(rng: random.Random, topic: str, on_topic_words: int) -> str:
    """`on_topic_words` words from `topic`, the rest from other topics, shuffled."""
    others = [t for t in TOPICS if t != topic]
    words = rng.sample(TOPICS[topic], on_topic_words)
    words += [rng.choice(TOPICS[rng.choice(others)]) for _ in range(RESPONSE_WORDS - on_topic_words)]
    rng.shuffle(words)
    return " ".join(words) + " ."


def _prompt(rng: random.Random) -> tuple:
    topic = rng.choice(sorted(TOPICS))
    return topic, rng.choice(PROMPT_TEMPLATES).format(t=topic)


def pairs(n: int, seed: int, flip_rate: float = 0.0) -> Iterator[dict]:
    """TRL-style pairwise rows: chosen is fully on topic, rejected fully off topic. With `flip_rate`, that
    share of rows has chosen and rejected swapped (label noise, for robustness benchmarks)."""
    rng = random.Random(seed)
    for _ in range(n):
        topic, prompt = _prompt(rng)
        good, bad = _response(rng, topic, RESPONSE_WORDS), _response(rng, topic, 0)
        if flip_rate and rng.random() < flip_rate:
            good, bad = bad, good
        yield {"prompt": prompt, "chosen": good, "rejected": bad}


def ranked(n: int, seed: int, list_size: int = 4) -> Iterator[dict]:
    """Lists of `list_size` responses with distinct on-topic shares; score = share of on-topic words."""
    rng = random.Random(seed)
    for _ in range(n):
        topic, prompt = _prompt(rng)
        counts = rng.sample(range(RESPONSE_WORDS + 1), list_size)
        responses = [_response(rng, topic, c) for c in counts]
        yield {"prompt": prompt, "responses": responses, "scores": [c / RESPONSE_WORDS for c in counts]}


def binary(n: int, seed: int) -> Iterator[dict]:
    """TRL-style unpaired rows (prompt/completion/label), half desirable."""
    rng = random.Random(seed)
    for i in range(n):
        topic, prompt = _prompt(rng)
        good = i % 2 == 0
        yield {"prompt": prompt, "completion": _response(rng, topic, RESPONSE_WORDS if good else 0), "label": good}


MULTI_OBJECTIVES = ["topic", "brevity"]


def _words(rng: random.Random, topic: str, on_topic: int, length: int) -> str:
    others = [t for t in TOPICS if t != topic]
    words = rng.sample(TOPICS[topic], on_topic) + [rng.choice(TOPICS[rng.choice(others)]) for _ in range(length - on_topic)]
    rng.shuffle(words)
    return " ".join(words) + " ."


def multi(n: int, seed: int, agree_rate: float = 0.2, brief_rate: float = 0.5) -> Iterator[dict]:
    """Two responses scored on two conflicting objectives (`objective_scores` [2][2], names "topic", "brevity"),
    with an overall human label (chosen first) that depends on the prompt.

    On most rows the longer response has more on-topic words (topic prefers it, brevity the other one); on an
    `agree_rate` share the shorter one is also more on topic, so both objectives agree there. A `brief_rate` share
    of prompts start with "briefly ,": their labeller chose the shorter response, the others' the more on-topic
    one — the trade-off is the prompt's, which is what the Preference Orchestrator learns."""
    rng = random.Random(seed)
    for _ in range(n):
        topic, prompt = _prompt(rng)
        short_len, long_len = rng.randint(2, 4), rng.randint(6, 9)
        short_on, long_on = rng.randint(0, 1), rng.randint(short_len + 1, min(long_len, len(TOPICS[topic])))
        if rng.random() < agree_rate:
            short_on, long_on = short_len, rng.randint(0, short_len - 1)
        brief = rng.random() < brief_rate
        responses = [(_words(rng, topic, long_on, long_len), long_on, long_len),
                     (_words(rng, topic, short_on, short_len), short_on, short_len)]
        chosen, rejected = sorted(responses, key=lambda r: (r[2], -r[1]) if brief else (-r[1], r[2]))
        yield {"prompt": f"briefly , {prompt}" if brief else prompt, "chosen": chosen[0], "rejected": rejected[0],
               "objective_names": MULTI_OBJECTIVES,
               "objective_scores": [[float(on), -float(length)] for _, on, length in (chosen, rejected)]}


def pairs_from_lists(lists: Iterator[dict], seed: int, all_pairs: bool = False) -> Iterator[dict]:
    """Pairs drawn from ranked lists (higher score = chosen): one random pair per list, or every ordered pair."""
    rng = random.Random(seed)
    for row in lists:
        order = sorted(range(len(row["responses"])), key=lambda i: -row["scores"][i])
        picks = [(a, b) for x, a in enumerate(order) for b in order[x + 1 :]]
        for a, b in picks if all_pairs else [rng.choice(picks)]:
            yield {"prompt": row["prompt"], "chosen": row["responses"][a], "rejected": row["responses"][b]}


def user_pairs(n: int, seed: int, users_per_group: int = 4, first_user: int = 0) -> Iterator[dict]:
    """Pairs labelled by simulated users whose groups disagree (PAL's demo): the responses of `multi` rows, and
    users "topic-<i>" choose the more on-topic one, users "brief-<i>" the shorter one (the two differ on about
    80% of rows). User i ranges over first_user .. first_user + users_per_group − 1 in each group."""
    rng = random.Random(seed + 7919)
    for row in multi(n, seed, brief_rate=0.0):
        group = rng.choice(("topic", "brief"))
        user = f"{group}-{first_user + rng.randrange(users_per_group)}"
        (on_a, len_a), (on_b, len_b) = ((on, -neg) for on, neg in row["objective_scores"])
        a_first = (on_a, -len_a) > (on_b, -len_b) if group == "topic" else (-len_a, on_a) > (-len_b, on_b)
        chosen, rejected = (row["chosen"], row["rejected"]) if a_first else (row["rejected"], row["chosen"])
        yield {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "user_id": user}


SHAPES = {"pairwise": pairs, "ranked": ranked, "binary": binary, "multi": multi}


def write_jsonl(rows: Iterator[dict], path: Path) -> Path:
    """Write rows atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)
    return path


def corpus() -> Iterator[str]:
    """Text the demo tokenizer is trained on: every word and template the generator can emit."""
    for words in TOPICS.values():
        yield " ".join(words) + " ."
    for t in TOPICS:
        for template in PROMPT_TEMPLATES:
            yield template.format(t=t)
