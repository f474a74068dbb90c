"""bench/etc_attention.py: the JSON it ends with, and its MAC counts against the analytic formula.

Forward MACs of one ``Attention`` with inner width C on N tokens in sequences of L: projections
``4 N C^2`` (q, k, v, out) plus ``q k^T`` and ``probs v`` (``N L C`` each). ETC's grid attention is one
sequence of ``L = T H W``; factorised attention is ``T`` sequences of ``H W`` then ``H W`` of ``T``.
"""

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vdblocks.flops import count_flops

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "etc_attention.py"


def formula(b, t, h, w, c):
    n = b * t * h * w
    full = n * (4 * c * c) + b * 2 * (t * h * w) ** 2 * c
    spatial = n * (4 * c * c) + b * t * 2 * (h * w) ** 2 * c
    temporal = n * (4 * c * c) + b * h * w * 2 * t**2 * c
    return full, spatial + temporal


@functools.cache
def load_bench():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("etc_attention_bench", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_quick_json_run_reports_macs_times_and_memory():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    payload = json.loads(lines[-1])
    assert len(lines) > 1  # the readable tables come first
    assert {"benchmark", "machine", "config", "results", "throughput_gmacs_per_s"} <= payload.keys()
    assert {"cpu", "cores", "torch", "device"} <= payload["machine"].keys()
    config, rows = payload["config"], payload["results"]
    assert len(rows) == len(config["settings"]) >= 2
    for row in rows:
        b, t, c, side = row["batch"], row["frames"], row["channels"], row["latent"]
        assert row["heads"] * row["dim_head"] == c
        full, fact = formula(b, t, side, side, c)
        assert (row["macs_full"], row["macs_factorised"]) == (full, fact)
        assert row["flops_full"] == 2 * full and row["flops_factorised"] == 2 * fact
        assert row["mac_ratio"] == full / fact
        assert abs(row["mac_ratio"] - (2 * c + t * side**2) / (4 * c + side**2 + t)) < 1e-12
        assert abs(row["mac_ratio_paper"] - (4 * c + t * side**2) / (8 * c + side**2 + t)) < 1e-12
        assert row["param_ratio"] == 0.5  # one attention against two of the same width
        assert row["grid"][0] * row["grid"][1] == t  # no padded cells
        assert row["macs_train_full"] > row["macs_full"] and row["macs_train_factorised"] > row["macs_factorised"]
        for mode in ("fwd", "train"):
            for variant in ("full", "factorised"):
                longest = t * side**2 if variant == "full" else max(side**2, t)
                run = longest <= config["max_tokens"]
                source = row[f"time_{mode}_{variant}_source"]
                assert source == ("measured" if run else "estimated")
                assert row[f"time_{mode}_{variant}"] > 0
                memory = row[f"mem_{mode}_{variant}"]
                assert (memory is not None and memory >= 0) if run else memory is None
            assert row[f"time_ratio_{mode}"] == row[f"time_{mode}_full"] / row[f"time_{mode}_factorised"]
    # The quick sizes exercise both paths: a full attention that runs and one that is estimated.
    sources = {row["time_fwd_full_source"] for row in rows}
    assert sources == {"measured", "estimated"}


@settings(max_examples=8)  # each example counts and runs both variants forward and backward
@given(t=st.integers(1, 6), side=st.integers(1, 3), heads=st.integers(1, 2))
def test_fake_tensor_counts_match_a_real_run_and_the_formula(t, side, heads):
    bench = load_bench()
    c = 4 * heads
    case = {
        "setting": "x",
        "frames": t,
        "pixels": 8 * side,
        "latent": side,
        "grid": list(bench.exact_grid(t)),
        "channels": c,
        "heads": heads,
        "dim_head": 4,
        "batch": 1,
    }
    for variant, expected in zip(("full", "factorised"), formula(1, t, side, side, c)):
        fake = bench.count_case(variant, case)
        module = bench.build(variant, case)
        video = torch.randn(1, c, t, side, side, requires_grad=True)
        out = module(video)
        assert out.shape == video.shape
        real = count_flops(module, video, backward=True)
        assert fake["macs"] == real.macs == expected
        assert fake["macs"] + fake["macs_backward"] == real.macs + real.backward.macs
