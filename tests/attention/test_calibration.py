import math

import pytest
import torch

from vdblocks.attention import MixedSelfAttention, calibration, clear_calibration_cache, favor_crossover
from vdblocks.attention.calibration import batch_heads_bucket, calibration_cache, time_attention_algorithms


@pytest.fixture(autouse=True)
def empty_cache():
    clear_calibration_cache()
    yield
    clear_calibration_cache()


def fake_timings(monkeypatch, favor_from: float):
    """Exact attention costs L^2, FAVOR+ costs favor_from * L: FAVOR+ is faster from favor_from on."""
    calls = []

    def timings(n, matrix, **kwargs):
        calls.append(n)
        return float(n * n), float(favor_from * n) - 1e-9

    monkeypatch.setattr(calibration, "time_attention_algorithms", timings)
    return calls


@pytest.mark.parametrize("favor_from", [48, 100, 600, 5000])
def test_crossover_lies_between_the_last_softmax_win_and_the_first_favor_win(monkeypatch, favor_from):
    calls = fake_timings(monkeypatch, favor_from)
    matrix = torch.randn(10, 8)
    lengths = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    crossover = favor_crossover(matrix, lengths=lengths)
    below = max((n for n in lengths if n < favor_from), default=None)
    above = min(n for n in lengths if n >= favor_from)
    assert crossover == math.ceil(math.sqrt(below * above))
    # it stops once FAVOR+ has won twice in a row
    assert calls[-1] == min((n for n in lengths if n > above), default=lengths[-1])
    # every measured length is assigned to the algorithm that was faster there
    for n in calls:
        assert (n >= crossover) == (n >= favor_from)


def test_edges_never_and_always(monkeypatch):
    fake_timings(monkeypatch, 10**9)
    assert favor_crossover(torch.randn(10, 8), lengths=(32, 64)) == 128  # softmax everywhere measured
    clear_calibration_cache()
    fake_timings(monkeypatch, 1)
    assert favor_crossover(torch.randn(10, 8), lengths=(32, 64)) == 32


def test_results_are_cached_per_device_dtype_and_head_dim(monkeypatch):
    calls = fake_timings(monkeypatch, 300)
    first = favor_crossover(torch.randn(10, 8))
    n_calls = len(calls)
    assert favor_crossover(torch.randn(10, 8)) == first and len(calls) == n_calls  # cached
    favor_crossover(torch.randn(10, 8, dtype=torch.float64))
    favor_crossover(torch.randn(12, 16))
    favor_crossover(torch.randn(10, 8), batch_heads=1)
    keys = calibration_cache()
    assert {(k.dtype, k.dim_head, k.nb_features, k.batch_heads) for k in keys} == {
        ("float32", 8, 10, 4),
        ("float64", 8, 10, 4),
        ("float32", 16, 12, 4),
        ("float32", 8, 10, 1),
    }
    favor_crossover(torch.randn(10, 8), refresh=True)
    assert len(calls) > n_calls + 2


def test_calibrated_layer_gates_on_the_measured_crossover(monkeypatch):
    fake_timings(monkeypatch, 300)
    layer = MixedSelfAttention(16, heads=2, dim_head=8, algorithm="calibrated")
    assert layer.crossover() == favor_crossover(layer.favor.projection_matrix) - 0.5
    for n in (16, 128, 256, 512, 4096):
        assert layer.select_algorithm(n) == ("favor" if n >= 300 else "softmax")
    x = torch.randn(2, 512, 16)
    forced = MixedSelfAttention(16, heads=2, dim_head=8, algorithm="favor")
    forced.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), forced(x))
    auto = MixedSelfAttention(16, heads=2, dim_head=8)  # the paper's rule is still the default
    assert auto.algorithm == "auto" and auto.crossover() == 16 and auto.select_algorithm(17) == "favor"


def test_each_workload_is_calibrated_at_its_rows_of_attention(monkeypatch):
    seen = []

    def timings(n, matrix, batch_heads=4, **kwargs):
        seen.append(batch_heads)
        return float(n * n * batch_heads), float(300 * n) - 1e-9  # FAVOR+ wins earlier with more rows

    monkeypatch.setattr(calibration, "time_attention_algorithms", timings)
    layer = MixedSelfAttention(16, heads=2, dim_head=8, algorithm="calibrated")
    one, eight, many = layer.crossover(batch_heads=1), layer.crossover(batch_heads=6), layer.crossover(batch_heads=99)
    assert set(seen) == {1, 8, 16} and one > eight > many  # b k bucketed to 1, 8 and the cap 16
    assert [batch_heads_bucket(n) for n in (1, 2, 3, 5, 16, 17, 1000)] == [1, 2, 4, 8, 16, 16, 16]
    calls = len(seen)
    layer(torch.randn(3, 64, 16))  # b k = 3 * 2 = 6: measured above, so nothing is timed again
    assert len(seen) == calls


def test_nothing_to_time_falls_back_to_eq14(monkeypatch):
    calls = fake_timings(monkeypatch, 300)
    with torch.device("meta"):
        layer = MixedSelfAttention(16, heads=2, dim_head=8, algorithm="calibrated")
    assert layer.crossover() == 16 and calls == []
    with pytest.raises(ValueError, match="meta"):
        favor_crossover(torch.empty(10, 8, device="meta"))


def test_real_timing_runs_and_returns_positive_seconds():
    softmax_s, favor_s = time_attention_algorithms(32, torch.randn(6, 4), batch_heads=1, min_run_time=0.001)
    assert softmax_s > 0 and favor_s > 0
    assert favor_crossover(torch.randn(6, 4), lengths=(16, 32), min_run_time=0.001) in (16, 23, 64)
