import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_json_run_ends_with_one_parsable_object():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attention.py"), "--quick", "--json", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    payload = json.loads(lines[-1])
    assert len(lines) > 1  # the readable table comes first
    assert {"benchmark", "machine", "config", "results", "summary"} <= payload.keys()
    assert {"cpu", "cores", "torch", "device"} <= payload["machine"].keys()
    assert payload["results"]
    for row in payload["results"]:
        for key in ("L", "d", "auto_pick", "faster", "auto_slowdown", "nb_features"):
            assert key in row
        for algo in ("softmax", "favor", "auto", "calibrated"):
            assert row[f"time_{algo}"] > 0
            assert row[f"macs_{algo}"] > 0
        # auto runs exactly the algorithm it reports picking, so it does that algorithm's work.
        assert row["macs_auto"] == row[f"macs_{row['auto_pick']}"]
        assert row["macs_calibrated"] == row[f"macs_{row['calibrated_pick']}"]
        # The rule of EVDM eq. 14 with the default threshold 2.
        assert row["auto_pick"] == ("favor" if row["L"] > 2 * row["d"] else "softmax")
        assert row["faster"] in ("softmax", "favor")
    assert set(payload["summary"]) == {str(d) for d in payload["config"]["head_dims"]}
    for entry in payload["summary"].values():
        assert {
            "rule_switches_above_L",
            "measured_crossover_L",
            "macs_crossover_L",
            "mispicked_L",
            "calibrated_switches_above_L",
            "worst_calibrated_slowdown",
        } <= entry.keys()
