"""confirm-vllm-rocm (benchmarks/results/confirm-vllm-rocm-candidates.md): whether vLLM's decode line, fitted on NVIDIA
GPUs only, holds on AMD GPUs within its stated error, so that a vLLM plan on an AMD GPU may drop its "extrapolation"
reason (arm V1) or keeps it (V0). Recomputed here from the fixture: step 4 gives no decision (4 new points, one GPU
model), so V0 stays; step 2's score is kept as recorded."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from stackgen.plan import speed

from public_logs import predict_decode, readings_of_its_time

POINTS = yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                        .read_text())["points"]
NEW = [p for p in POINTS if p.get("corpus") == "confirm-vllm-rocm"]
STATED = 0.31  # BACKENDS["vllm"].error when the rule was fixed (e07d7ce); 0.32 since these 4 rows count in it


def _source(p: dict) -> str:
    return p["source"].split(" ")[0].split("/blob/")[0]


def step_4_decides(points: list[dict]) -> bool:
    """Step 4: at least 6 new points, from 2+ sources and 2+ GPU models, or no decision."""
    return len(points) >= 6 and len({_source(p) for p in points}) >= 2 and len({p["gpu"] for p in points}) >= 2


def step_3_adopts(points: list[dict]) -> bool:
    """Step 3: 8 in 10 of the new points within the stated error, and their mean ln(predicted/measured) within 0.15."""
    ratios = [predict_decode(p) / p["tokens_per_s"] for p in points]
    within = sum(abs(r - 1) <= STATED for r in ratios)
    mean_ln = sum(math.log(r) for r in ratios) / len(ratios)
    return within >= math.ceil(0.8 * len(ratios)) and abs(mean_ln) <= 0.15


def test_the_new_points_are_held_out_amd_vllm_rows_with_their_sources():
    assert len(NEW) == 4
    for p in NEW:
        assert p["backend"] == "vllm" and p["held_out"] and p["id"].startswith("vrocm-")
        assert p["source"].startswith("https://github.com/") and p.get("tensor_parallel", 1) == 1
        assert p["bandwidth_gbs"] == 256 and "8060S" in p["gpu"]  # detect.KNOWN_GPUS' Radeon 8060S
    assert {_source(p) for p in NEW} == {"https://github.com/lhl/strix-halo-testing",
                                        "https://github.com/unergybot/BestBox"}


def test_step_4_gives_no_decision_and_the_plans_keep_their_reason():
    assert not step_4_decides(NEW)  # 4 points, one GPU model
    assert speed.BACKENDS["vllm"].fitted_vendors == frozenset({"nvidia"})  # V0 stays


def test_step_2_as_recorded_and_step_3_would_not_have_adopted():
    """Scored under the lines of the rule's main (no later decision exists yet): 3 of 4 within 31%, 2 within 15%, mean
    ln +0.24 (over-predicted); step 3 alone would have kept V0 too ((ii) fails)."""
    with readings_of_its_time("confirm-vllm-rocm"):
        ratios = [predict_decode(p) / p["tokens_per_s"] for p in NEW]
        assert not step_3_adopts(NEW)
    assert sum(abs(r - 1) <= STATED for r in ratios) == 3
    assert sum(abs(r - 1) <= 0.15 for r in ratios) == 2
    assert round(sum(math.log(r) for r in ratios) / len(ratios), 2) == 0.24


def test_the_rules_steps_can_fail_and_pass():
    """step_4_decides and step_3_adopts on made-up points: each condition can flip the answer."""
    def pt(i: int, gpu: str, src: str) -> dict:
        return dict(NEW[1], id=f"x{i}", gpu=gpu, source=f"https://github.com/{src}/blob/x/y (z)")
    six = [pt(i, "A" if i % 2 else "B", "s1" if i < 3 else "s2") for i in range(6)]
    assert step_4_decides(six)
    assert not step_4_decides(six[:5])
    assert not step_4_decides([dict(p, gpu="A") for p in six])
    assert not step_4_decides([dict(p, source="https://github.com/s1/blob/x/y (z)") for p in six])
    exact = [dict(p, tokens_per_s=predict_decode(p)) for p in six]  # every ratio 1
    assert step_3_adopts(exact)
    assert not step_3_adopts([dict(p, tokens_per_s=p["tokens_per_s"] / 1.2) for p in exact])  # mean ln +0.18
