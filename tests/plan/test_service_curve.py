"""The service curve (aggregate tokens/s at b tokens per step) against public llama.cpp microbatch tables
(tests/fixtures/public-logs/service_curve.yaml; issue 13): speed.aggregate_tokens_per_s within the fixture's stated
tolerance, and every known miss still a miss (else its note is stale and it belongs back in the check)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from public_logs import predict_service_curve_point as predicted

FIX = yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "service_curve.yaml").read_text())
TOL = FIX["tolerance"]
POINTS = [(c, p) for c in FIX["curves"] for p in c["points"]]


@pytest.mark.parametrize("curve,point", POINTS, ids=[f"{c['id']}-b{p['batch']}" for c, p in POINTS])
def test_aggregate_within_tolerance(curve, point):
    assert curve["source"].startswith("https://github.com/")
    ratio = predicted(curve, point["batch"]) / point["tokens_per_s"]
    if point.get("known_miss"):
        pytest.xfail(point["known_miss"])
    assert abs(ratio - 1) <= TOL, ratio


def test_known_misses_are_still_misses_and_their_ratio_is_the_stated_one():
    for curve, point in POINTS:
        if point.get("known_miss"):
            ratio = predicted(curve, point["batch"]) / point["tokens_per_s"]
            assert abs(ratio - 1) > TOL, (curve["id"], point["batch"])
            assert f"{ratio:.2f}" in point["known_miss"], (curve["id"], point["batch"], ratio)


def test_the_curves_start_at_one_stream():
    for curve in FIX["curves"]:
        assert curve["points"][0]["batch"] == 1 and len(curve["points"]) >= (4 if curve.get("held_out") else 5)


@pytest.mark.parametrize("kind", ["quantized", "16bit"])
def test_cuda_batch_mfu_is_the_fit_of_the_curves_not_held_out(kind):
    """speed.BACKENDS["cuda"]'s batched-decode MFU per weight kind is what fit_batch_mfu gives on the fixture's curves
    of that kind that are not held out (the legacy block types' curves with the other block-quantized ones:
    Backend.batch_mfu_for gives every kind but "16bit" the one batch_mfu)."""
    from stackgen.plan import speed
    from stackgen.plan.capacity import gpu_peak_flops
    curves = [(c["active_params"], gpu_peak_flops(c["gpu"], c["bandwidth_gbs"]),
               [(p["batch"], p["tokens_per_s"]) for p in c["points"]])
              for c in FIX["curves"] if (c.get("weights") == "16bit") == (kind == "16bit") and not c.get("held_out")]
    assert curves
    assert speed.BACKENDS["cuda"].batch_mfu_for(kind) == pytest.approx(speed.fit_batch_mfu(curves), abs=0.001)


def test_held_out_curves_exist_and_are_checked():
    held = [c for c in FIX["curves"] if c.get("held_out")]
    assert held and all(len(c["points"]) >= 4 for c in held)


def test_fit_batch_mfu_recovers_a_known_mfu():
    """A curve made by the model itself (t(b) = t1 + (b - 1) x 2P / (mfu x peak)) gives its mfu back."""
    from stackgen.plan import speed
    params, peak, t1, mfu = 8e9, 71e12, 0.0064, 0.25
    pts = [(b, b / (t1 + (b - 1) * 2 * params / (mfu * peak))) for b in (1, 2, 4, 8)]
    assert speed.fit_batch_mfu([(params, peak, pts)]) == pytest.approx(mfu, rel=1e-9)
    assert speed.batch_compute_seconds(params, 1, peak, mfu) == 0.0
    assert speed.batch_compute_seconds(params, 3, peak, mfu) == pytest.approx(2 * 2 * params / (mfu * peak))
    assert speed.batch_compute_seconds(0, 3, peak, mfu) == 0.0
