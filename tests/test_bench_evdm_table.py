"""bench/evdm_table.py writes its docs page only when asked (--write-docs)."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # bench scripts import their helpers as top-level modules

import evdm_table  # noqa: E402

STORED = json.loads((ROOT / "docs" / "benchmarks" / "results" / "evdm_table.json").read_text())


def docs_digest() -> str:
    """One hash of every file under docs/benchmarks/ and of docs/benchmarks.md (names and bytes)."""
    h = hashlib.sha256()
    files = [ROOT / "docs" / "benchmarks.md", *(ROOT / "docs" / "benchmarks").rglob("*")]
    for path in sorted(p for p in files if p.is_file()):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def pages(monkeypatch, tmp_path):
    """The stored counts stand in for the full count (15 s), and the page goes to a temporary folder."""
    monkeypatch.setattr(evdm_table, "measure", lambda preset: STORED["results"][preset])
    monkeypatch.setattr(evdm_table, "DOCS", tmp_path / "pages")
    return tmp_path / "pages"


def test_a_full_run_writes_the_page_only_with_write_docs(pages, capsys):
    before = docs_digest()
    evdm_table.main(["--json"])  # the invocation that used to rewrite docs/benchmarks/evdm_table.md
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["benchmark"] == "evdm_table" and not payload["config"]["quick"] and payload["table8"]
    assert not pages.exists()
    evdm_table.main(["--write-docs"])
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in pages.iterdir()) == ["evdm_table.md", "evdm_table.png"]
    assert "## Table 8 (KTH ablation), batch 64" in (pages / "evdm_table.md").read_text()
    assert docs_digest() == before


def test_write_docs_refuses_a_quick_run(pages, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evdm_table.main(["--quick", "--write-docs"])
    assert exit_info.value.code == 2 and "--write-docs needs the full tables" in capsys.readouterr().err
    assert not pages.exists()
