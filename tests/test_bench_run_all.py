import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # bench scripts import their helpers as top-level modules

from run_all import BENCHMARKS  # noqa: E402


def test_every_benchmark_script_is_in_the_report():
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py"}
    assert scripts == {b.script for b in BENCHMARKS}


def test_quick_report_writes_tables_plots_and_raw_results(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run_all.py"),
            "--quick",
            "--only",
            "attention",
            "--out",
            str(tmp_path),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ran"] == ["attention"] and not summary["failed"]
    report = (tmp_path / "benchmarks.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert images and all((tmp_path / image).is_file() for image in images)
    assert "smoke run" in report and summary["machine"]["cpu"] in report
    raw = json.loads((tmp_path / "benchmarks" / "results" / "attention.json").read_text())
    assert raw["benchmark"] == "attention" and raw["results"]


def test_run_all_writes_docs_and_passes_write_docs_on_only_when_asked(monkeypatch, tmp_path, capsys):
    import hashlib

    import run_all

    def docs_digest():  # what a run could write: the report, its figures and results, the pages
        h = hashlib.sha256()
        files = [ROOT / "docs" / "benchmarks.md", *(ROOT / "docs" / "benchmarks").rglob("*")]
        for path in sorted(p for p in files if p.is_file()):
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
        return h.hexdigest()

    results = ROOT / "docs" / "benchmarks" / "results"
    stored = (results / "evdm_table.json").read_text()
    calls = []

    def fake_run(args, **kwargs):  # the stored payload stands in for the benchmark's process
        calls.append(list(args))
        assert kwargs["timeout"]
        payload = json.loads((results / f"{Path(args[1]).stem}.json").read_text())
        return subprocess.CompletedProcess(args, 0, stdout=json.dumps(payload) + "\n", stderr="")

    monkeypatch.setattr(run_all.subprocess, "run", fake_run)
    monkeypatch.setattr(run_all, "DOCS", tmp_path / "docs")
    before = docs_digest()

    summary = run_all.main(["--only", "evdm_table"])
    assert summary["report"] is None and summary["ran"] == ["evdm_table"]
    assert "--write-docs" not in calls[-1] and calls[-1][1].endswith("evdm_table.py")
    assert not (tmp_path / "docs").exists()
    assert "EVDM Table 8" in capsys.readouterr().out  # the report is printed instead

    summary = run_all.main(["--only", "evdm_table", "--write-docs"])
    assert "--write-docs" in calls[-1]
    assert summary["report"] == str(tmp_path / "docs" / "benchmarks.md")
    assert (tmp_path / "docs" / "benchmarks" / "report_evdm_table.png").is_file()
    written = tmp_path / "docs" / "benchmarks" / "results" / "evdm_table.json"
    assert json.loads(written.read_text()) == json.loads(stored)

    run_all.main(["--only", "attention,evdm_table", "--out", str(tmp_path / "elsewhere")])
    assert all("--write-docs" not in call for call in calls[-2:])  # --out alone writes only the report
    assert (tmp_path / "elsewhere" / "benchmarks.md").is_file()

    with pytest.raises(SystemExit):
        run_all.main(["--quick", "--write-docs"])
    assert docs_digest() == before


def test_the_scripts_that_take_write_docs_are_the_ones_run_all_passes_it_to():
    takes = {
        p.name for p in (ROOT / "bench").glob("*.py") if p.name != "run_all.py" and '"--write-docs"' in p.read_text()
    }
    assert takes == {b.script for b in BENCHMARKS if b.writes_docs} == {"evdm_table.py"}
