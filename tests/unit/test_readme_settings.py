"""The README's settings table is the code's settings, name for name and default for default."""

from __future__ import annotations

import re
from pathlib import Path

from worker.settings import ENV_VARS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _table() -> dict[str, str]:
    text = README.read_text()
    body = text.split("<!-- settings-table -->")[1].split("<!-- /settings-table -->")[0]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]+) \|", body, flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_every_setting_is_documented_once() -> None:
    assert set(_table()) == set(ENV_VARS)


def test_documented_defaults_match() -> None:
    defaults = Settings()
    for name, documented in _table().items():
        value = getattr(defaults, ENV_VARS[name])
        if value is None:
            assert documented.startswith("(none")
        else:
            assert documented == f"`{value}`", name
