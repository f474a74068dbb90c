import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # bench scripts import their helpers as top-level modules

from evdm_speed import CATEGORIES, op_category  # noqa: E402


def test_quick_json_run_ends_with_one_parsable_object():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "evdm_speed.py"), "--quick", "--json", "--threads", "1", "--blocks"],
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
    assert {"benchmark", "machine", "config", "results", "summary"} <= payload.keys()
    assert {"cpu", "cores", "torch", "device", "load_average_1min", "load_average_1min_end"} <= payload[
        "machine"
    ].keys()
    assert payload["config"]["threads"] == 1
    assert payload["config"]["batch"] == 2
    rows = {row["model"]: row for row in payload["results"]}
    assert set(rows) == {"mcvd", "evdm", "evdm_l"}
    for row in rows.values():
        for key in (
            "train_s",
            "sample_s",
            "train_speedup",
            "sample_speedup",
            "mac_cut",
            "macs_per_sample",
            "train_mac_share",
            "sample_mac_share",
            "sample_gmacs_per_s",
            "params",
        ):
            assert row[key] > 0, key
        # The ratios are what they say they are, from the same run's times and counts.
        assert abs(row["train_speedup"] - rows["mcvd"]["train_s"] / row["train_s"]) < 1e-9 * row["train_speedup"]
        assert abs(row["sample_speedup"] - rows["mcvd"]["sample_s"] / row["sample_s"]) < 1e-9 * row["sample_speedup"]
        assert row["mac_cut"] == rows["mcvd"]["macs_per_sample"] / row["macs_per_sample"]
    assert rows["mcvd"]["train_speedup"] == rows["mcvd"]["sample_speedup"] == rows["mcvd"]["mac_cut"] == 1.0
    # EVDM's blocks do fewer MACs than the baseline's, EVDM-L's fewer still (Table 8's ordering).
    assert rows["mcvd"]["macs_per_sample"] > rows["evdm"]["macs_per_sample"] > rows["evdm_l"]["macs_per_sample"]
    summary = payload["summary"]
    assert summary["evdm_l_sample_speedup"] == rows["evdm_l"]["sample_speedup"]
    assert summary["evdm_l_train_speedup"] == rows["evdm_l"]["train_speedup"]
    assert set(summary["evdm_l_meets_target"]) == {"train", "sample"}
    assert isinstance(summary["quiet"], bool)
    # --blocks: the same res blocks of every model, timed, with their MACs.
    blocks = payload["blocks"]
    names = {row["block"] for row in blocks}
    assert {row["model"] for row in blocks} == {"mcvd", "evdm", "evdm_l"}
    assert len(blocks) == 3 * len(names)
    macs = {(row["model"], row["block"]): row["macs"] for row in blocks}
    for row in blocks:
        for key in ("fwd_ms", "fwd_bwd_ms", "fwd_speedup", "fwd_bwd_speedup", "macs", "fwd_gmacs_per_s"):
            assert row[key] > 0, key
        assert row["mac_cut"] == macs[("mcvd", row["block"])] / row["macs"]
        # EVDM's bottleneck pathway does fewer MACs than MCVD's block in the same place.
        if row["model"] != "mcvd":
            assert row["macs"] < macs[("mcvd", row["block"])]


def test_op_categories_cover_the_ops_that_dominate():
    assert op_category("aten::mkldnn_convolution") == "conv"
    assert op_category("aten::convolution_backward") == "conv"
    assert op_category("aten::bmm") == "matmul"
    assert op_category("aten::_scaled_dot_product_flash_attention_for_cpu") == "matmul"
    assert op_category("aten::native_group_norm_backward") == "groupnorm"
    assert op_category("aten::cat") == "copy"
    assert op_category("aten::copy_") == "copy"
    assert op_category("aten::threshold_backward") == "elementwise"
    assert op_category("aten::bernoulli_") == "dropout"
    assert op_category("aten::empty") == "other"
    assert op_category("aten::_convert_indices_from_coo_to_csr") == "other"
    assert set(CATEGORIES) >= {"conv", "matmul", "groupnorm", "copy", "elementwise", "other"}
