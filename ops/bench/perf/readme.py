"""Put the latest table into README.md's Performance section, between its markers."""

from __future__ import annotations

from pathlib import Path

BEGIN = "<!-- bench-table -->"
END = "<!-- /bench-table -->"


def replace_table(readme: Path, block: str) -> None:
    """Replace what lies between the markers with ``block``; both markers must exist."""
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} block")
    updated = text[: start + len(BEGIN)] + "\n" + block.strip() + "\n" + text[end:]
    readme.write_text(updated)
