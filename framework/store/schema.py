"""The one Arrow schema shared by every feedback kind (see SCHEMA.md for the meaning of each column)."""

from __future__ import annotations

import pyarrow as pa

# Bump when a column changes meaning or type; readers refuse a newer major schema than they know.
SCHEMA_VERSION = 1
KINDS = ("pairwise", "ranked", "binary", "multi")

_IDS = pa.list_(pa.int32())
_TEXTS = pa.list_(pa.string())

STORE_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_is_chat", pa.bool_(), nullable=False),
        pa.field("responses", _TEXTS, nullable=False),
        pa.field("scores", pa.list_(pa.float64())),
        pa.field("label", pa.bool_()),
        pa.field("objective_names", _TEXTS),
        pa.field("objective_scores", pa.list_(pa.list_(pa.float64()))),
        pa.field("response_prompts", _TEXTS),
        pa.field("prompt_ids", _IDS, nullable=False),
        pa.field("response_ids", pa.list_(_IDS), nullable=False),
        pa.field("response_prompt_ids", pa.list_(_IDS)),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("user_id", pa.string()),  # who gave the annotation (PAL); null when the source has none
    ]
)

# Columns that later versions add (written by add_columns); listed so readers can type-check them.
ADDED_COLUMNS = {
    "ref_logps": pa.list_(pa.float64()),
    "ref_lengths": pa.list_(pa.int32()),
}
