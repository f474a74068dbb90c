import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # bench scripts import their helpers as top-level modules

from run_all import BENCHMARKS  # noqa: E402


def test_every_benchmark_script_is_in_the_report():
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py"}
    assert scripts == {b.script for b in BENCHMARKS}


def test_quick_report_writes_tables_plots_and_raw_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--only", "attention", "--out", str(tmp_path),
         "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
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
