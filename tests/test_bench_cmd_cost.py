import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_json_run_reports_consistent_costs_and_ratios():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cmd_cost.py"), "--quick", "--json", "--threads", "1"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    payload = json.loads(lines[-1])
    assert len(lines) > 1  # the readable table comes first
    assert {"benchmark", "machine", "config", "results", "ratios", "content_patch", "paper"} <= payload.keys()
    assert {"cpu", "cores", "torch", "device"} <= payload["machine"].keys()
    rows = {row["model"]: row for row in payload["results"]}
    passes, macs = payload["config"]["passes"], payload["per_pass_macs"]
    # CMD's cost is its three parts, each per-pass count times its number of passes.
    parts = ("content", "motion", "decoder")
    assert (
        abs(rows["cmd"]["tmacs"] * 1e12 - sum(macs[k] * passes[k] for k in parts)) <= 1e-6 * rows["cmd"]["tmacs"] * 1e12
    )
    for row in rows.values():
        assert row["tmacs"] > 0 and row["time_s"] > 0 and row["tflops"] == 2 * row["tmacs"]
    for base in ("video_dit_full", "video_dit_divided"):
        ratio = payload["ratios"][f"{base}_over_cmd"]
        assert abs(ratio["macs"] - rows[base]["tmacs"] / rows["cmd"]["tmacs"]) < 1e-9 * ratio["macs"]
        assert abs(ratio["time"] - rows[base]["time_s"] / rows["cmd"]["time_s"]) < 1e-9 * ratio["time"]
        assert ratio["macs"] > 1  # denoising the whole volume costs more than CMD
    # Full attention over every token of the clip costs more than divided attention.
    assert rows["video_dit_full"]["tmacs"] > rows["video_dit_divided"]["tmacs"]
    patches = payload["content_patch"]
    assert [p["content_patch"] for p in patches] == [4, 8, 16]
    # A larger content patch: fewer content tokens, fewer motion-DiT MACs; the motion tokens stay.
    assert [p["content_tokens"] for p in patches] == sorted((p["content_tokens"] for p in patches), reverse=True)
    assert patches[0]["gmacs_per_pass"] > patches[1]["gmacs_per_pass"] > patches[2]["gmacs_per_pass"]
    assert len({p["motion_tokens"] for p in patches}) == 1
    assert abs(payload["paper"]["ratio_from_tflops"] - 938.9 / 46.83) < 1e-9
