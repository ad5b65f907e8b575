"""Split implicit-prompt pairs (only `chosen` and `rejected`, whole dialogues sharing a prefix).

TRL takes the longest common prefix (messages for chat lists, characters for text). For text dialogues in
the HH "\\n\\nHuman: … \\n\\nAssistant: …" form a character prefix can run into the responses when both start
with the same word, so we cut the shared text after the last assistant marker inside the common prefix: the
prompt is the shared dialogue up to the last assistant turn, and each response is what follows it. Text
without a marker falls back to TRL's character rule.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

ASSISTANT_MARKERS = ("\n\nAssistant:", "\nAssistant:", "<|assistant|>", "<|im_start|>assistant")


def split_implicit_text(chosen: str, rejected: str) -> Tuple[str, str, str]:
    """(prompt, chosen response, rejected response); the prompt is "" when nothing is shared."""
    common = os.path.commonprefix([chosen, rejected])
    cut = max((common.rfind(m) + len(m) for m in ASSISTANT_MARKERS if m in common), default=-1)
    if cut < 0:
        cut = len(common)
        # TRL's rule: leave the separating space with the responses.
        if 0 < cut < min(len(chosen), len(rejected)) and common[cut - 1] == " ":
            cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def split_implicit_chat(chosen: List[Dict[str, Any]], rejected: List[Dict[str, Any]]) -> Tuple[list, list, list]:
    """Longest common run of messages is the prompt; what differs is each response (TRL's rule)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]
