"""The fixtures shipped under tests/fixtures are exactly the files PROVENANCE.md lists."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|", re.M)


def test_every_shipped_fixture_is_listed_with_its_size_and_sha256() -> None:
    rows = ROW.findall((FIXTURES / "PROVENANCE.md").read_text())
    assert rows, "no fixture rows in tests/fixtures/PROVENANCE.md"
    shipped = {p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*") if p.is_file()} - {"PROVENANCE.md"}
    assert shipped == {name for name, _, _ in rows}
    for name, size, sha in rows:
        data = (FIXTURES / name).read_bytes()
        assert len(data) == int(size), name
        assert hashlib.sha256(data).hexdigest() == sha, name
