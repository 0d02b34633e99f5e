"""The README's configuration table names every setting, with the class's default."""

from __future__ import annotations

import re
from pathlib import Path

from bus.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(EVENTBUS_[A-Z_]+)` \| (.+?) \|", re.MULTILINE)


def _documented() -> dict[str, str]:
    return {name: default.strip() for name, default in ROW.findall(README.read_text())}


def test_every_setting_is_documented_with_its_default() -> None:
    documented = _documented()
    for field, info in Settings.model_fields.items():
        name = f"EVENTBUS_{field.upper()}"
        assert name in documented, f"{name} missing from the README's configuration table"
        default = info.default
        expected = "(empty)" if default == "" else f"`{default}`"
        assert documented[name] == expected, f"{name}: README says {documented[name]}"


def test_no_documented_setting_is_stale() -> None:
    known = {f"EVENTBUS_{f.upper()}" for f in Settings.model_fields}
    stale = set(_documented()) - known
    assert not stale, f"README documents settings that do not exist: {sorted(stale)}"
