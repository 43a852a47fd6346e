"""The README stays a newcomer's page and the docs it points to say what the code has (issue 25)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_short_and_every_page_it_names_exists():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    linked = set(re.findall(r"\]\(([^)#]+)\)", readme)) | set(re.findall(r"\b(docs/[a-z_]+\.md)\b", readme))
    assert {"docs/usage.md", "docs/install.md", "docs/losses.md", "docs/development.md"} <= linked
    assert [name for name in sorted(linked) if not (ROOT / name).is_file()] == []


def test_every_loss_preset_is_in_the_presets_table():
    table = (ROOT / "docs" / "losses.md").read_text().split("## 0. The presets", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", "\n".join(line.split("|")[1] for line in table.splitlines()
                                                     if line.startswith("| `"))))  # fmt: skip
    presets = {p.stem for p in (ROOT / "configs" / "loss").glob("*.yaml")}
    assert listed == presets
    readme = (ROOT / "README.md").read_text()
    assert f"{len(presets)} loss presets" in readme
