"""Offline W&B runs read back with wandb's own reader (`wandb leet inspect --json`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WANDB = Path(sys.executable).with_name("wandb")


def inspect(offline_dir: Path, summary: bool) -> dict | list[dict]:
    """`wandb leet inspect --json [--summary]` of an offline run: the summary object or every record."""
    args = [str(WANDB), "leet", "inspect", "--json", *(["--summary"] if summary else []), str(offline_dir)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout) if summary else [json.loads(line) for line in proc.stdout.splitlines()]


def media_rows(records: list[dict], key: str) -> list[dict]:
    """The history rows that logged ``key`` (a W&B media object, flattened to ``key.<field>``)."""
    return [r["history"]["item"] for r in records if r["type"] == "history" and f"{key}._type" in r["history"]["item"]]
