"""Shared constants/helpers of the data_prep tests (a uniquely named module: tests/ has no __init__.py)."""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "recipes" / "tiny" / "data"


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON lines; str rows are written verbatim (to plant malformed lines)."""
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path
