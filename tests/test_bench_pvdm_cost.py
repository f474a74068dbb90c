import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_json_run_ends_with_one_parsable_object():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pvdm_cost.py"), "--quick", "--json", "--threads", "1"],
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
    assert {"benchmark", "machine", "config", "results", "paper"} <= payload.keys()
    assert {"cpu", "cores", "torch", "device", "load_average_1min", "load_average_1min_end"} <= payload[
        "machine"
    ].keys()
    cfg, r = payload["config"], payload["results"]
    assert cfg["quick"] and cfg["threads"] == 1
    # The latent is (h w + t w + t h) C numbers of the plane grid; pixels are c T H W.
    t, h, w = r["plane_grid"]
    assert (t, h, w) == (cfg["frames"], cfg["size"] // cfg["patch"], cfg["size"] // cfg["patch"])
    assert r["latent_numbers"] == (h * w + t * w + t * h) * 4
    assert r["pixel_numbers"] == cfg["channels"] * cfg["frames"] * cfg["size"] ** 2
    for key in (
        "pvdm_macs_per_step",
        "baseline_macs_per_step",
        "decoder_macs_per_clip",
        "pvdm_step_s",
        "baseline_step_s",
        "decoder_s",
        "pvdm_params",
        "baseline_params",
    ):
        assert r[key] > 0, key
    # The ratios are what they say they are, from the same run's counts and times.
    assert r["mac_ratio_per_step"] == r["baseline_macs_per_step"] / r["pvdm_macs_per_step"]
    assert abs(r["step_speedup"] - r["baseline_step_s"] / r["pvdm_step_s"]) < 1e-9 * r["step_speedup"]
    steps = cfg["sample_steps"]
    assert abs(r["pvdm_sample_s"] - (steps * r["pvdm_step_s"] + r["decoder_s"])) < 1e-9
    assert abs(r["sampling_speedup"] - r["baseline_sample_s"] / r["pvdm_sample_s"]) < 1e-9 * r["sampling_speedup"]
    # A 2D U-Net on three planes does fewer MACs than a 3D U-Net on the pixel volume, at any size.
    assert r["baseline_macs_per_step"] > r["pvdm_macs_per_step"]
    assert r["time_macs_per_step"]["baseline"] > r["time_macs_per_step"]["pvdm"]
    assert payload["paper"]["sampling_speedup"] == 17.6
