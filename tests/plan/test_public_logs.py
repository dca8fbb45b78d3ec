"""The public-log corpus (tests/fixtures/public-logs/) against the planner's terms, with the issue's tolerances:
vLLM non-KV terms and KV size from startup logs, started/refused verdicts, and decode speed per backend."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from public_logs import (arm_backends, arm_figures, fit_point, linear_lines, lines, older_build, points_of_its_time,
                         predict_decode, predict_llamacpp_case, predict_ollama_case, predict_prefill, predict_vllm_case,
                         predict_vllm_kv_case, prefill_inputs, readings_of_its_time, refit_arm, speed_line,
                         today_fitted)
from stackgen.plan import speed
from stackgen.plan.memory import GIB

FIX = Path(__file__).parent.parent / "fixtures" / "public-logs"
CASES = yaml.safe_load((FIX / "vllm_memory.yaml").read_text())["cases"]
POINTS = yaml.safe_load((FIX / "decode_speed.yaml").read_text())["points"]
# the points of every decision before confirm-m1 (its corpora and the later decisions' came after, all held out)
BEFORE_M1 = points_of_its_time(POINTS, "confirm-tier")
OLLAMA = yaml.safe_load((FIX / "ollama_memory.yaml").read_text())["cases"]
LLAMACPP = yaml.safe_load((FIX / "llamacpp_memory.yaml").read_text())["cases"]
VLLM_KV = yaml.safe_load((FIX / "vllm_kv_capacity.yaml").read_text())["cases"]
PREFILL = yaml.safe_load((FIX / "prefill_speed.yaml").read_text())["points"]


@pytest.fixture
def bandwidths_before_confirm_m1():
    """The decisions made before confirm-m1 (benchmarks/results/confirm-m1-candidates.md) scored Apple GPUs at their
    datasheet bandwidth: their tests recompute them so (datasheet_apple, and every later decision's reading reverted:
    readings_of_its_time)."""
    with readings_of_its_time("confirm-tier"):
        yield


@contextmanager
def metal_line_before_confirm():
    """Metal's line as it was until confirm-metal adopted metal-k's arm (benchmarks/results/confirm-metal-candidates.md):
    the fit of its 16 points (today_fitted), the legacy kind on the shared slope. The earlier corpora's refit
    decisions were made under it, with FLOORS_BEFORE_CONFIRM; their tests recompute those decisions as made."""
    with linear_lines(), lines({"metal": arm_backends(POINTS, today_fitted, False)["metal"][0]}):
        yield  # and the consumer CUDA line of the time (linear_lines: before confirm-bw)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vllm_log_case(case):
    assert case["source"].startswith("https://github.com/") and case["log"].strip()
    p = predict_vllm_case(case)
    assert p["verdict"] == case["verdict"]
    misses = case.get("known_miss", {})
    for term in ("activation", "non_torch"):  # compute -20..+50%; a recorded miss must still miss
        within = 0.8 <= p[term] / GIB / case[f"{term}_gib"] <= 1.5
        assert within != (term in misses), (term, p[term] / GIB)
    if case["kv_gib"]:  # KV -5..+15%; a recorded miss must still miss
        within = 0.95 <= p["kv"] / GIB / case["kv_gib"] <= 1.15
        assert within != ("kv" in misses), p["kv"] / GIB


def test_activation_grows_with_batched_tokens_as_the_3090_logs_do():
    """Between 20k and 29k profiled tokens vLLM's activation peak grew 0.92 GiB (issue 10517): the term must too."""
    a, b = CASES[0], CASES[1]
    grow = (predict_vllm_case(b)["activation"] - predict_vllm_case(a)["activation"]) / GIB
    assert grow == pytest.approx(b["activation_gib"] - a["activation_gib"], rel=0.05)


@pytest.mark.parametrize("case", OLLAMA, ids=[c["id"] for c in OLLAMA])
def test_ollama_estimate_matches_the_logged_estimate(case):
    """The port of Ollama's estimator against the estimate Ollama itself logged for the same model, GPUs and
    options: layers offloaded within 2 of 81-layer models, KV -5..+15%, graph -20..+50%, GPU total +-15%
    (releases before v0.6.2 log 0.1-0.4 GiB more on single-GPU full offloads than v0.12.10's arithmetic gives)."""
    assert case["source"].startswith("https://github.com/") and case["log"].strip()
    p, logged = predict_ollama_case(case), case["logged"]
    assert abs(p["layers"] - logged["layers"]) <= 2
    assert 0.95 <= p["kv_gib"] / logged["kv_gib"] <= 1.15
    assert 0.8 <= p["graph_full_gib"] / logged["graph_full_gib"] <= 1.5
    assert 0.8 <= p["graph_partial_gib"] / logged["graph_partial_gib"] <= 1.5
    assert 0.85 <= p["vram_gib"] / logged["vram_gib"] <= 1.15


def test_ollama_partial_offload_follows_the_logged_split():
    """ollama 9181: four 22 GiB GPUs, 64k context: Ollama placed 11 layers on each; so must the port."""
    from public_logs import ollama_case_inputs
    from stackgen.engines.ollama_estimate import estimate
    case = next(c for c in OLLAMA if c["id"].startswith("ollama-9181"))
    model, gpus, opts = ollama_case_inputs(case)
    e = estimate(model, gpus, **opts)
    assert e.tensor_split == (11, 11, 11, 11) and not e.fully_loaded
    fewer = estimate(model, gpus, **{**opts, "num_ctx": 8192})  # a smaller context frees room for more layers
    assert fewer.layers > e.layers


@pytest.mark.parametrize("case", LLAMACPP, ids=[c["id"] for c in LLAMACPP])
def test_llamacpp_log_case(case):
    assert case["source"].startswith("https://github.com/") and case["log"].strip()
    p, logged = predict_llamacpp_case(case), case["logged"]
    assert 0.95 <= p["kv_mib"] / logged["kv_mib"] <= 1.15  # KV -5..+15%
    if logged.get("compute_mib"):
        assert 0.8 <= p["compute_mib"] / logged["compute_mib"] <= 1.5  # compute -20..+50%


@pytest.mark.parametrize("case", VLLM_KV, ids=[c["id"] for c in VLLM_KV])
def test_vllm_kv_capacity_case(case):
    """vLLM V1's KV capacity lines against the plan's per-token KV term: the logged token count must need what vLLM
    had available (KV -5..+15%), and a logged need for max_model_len must match, with the same verdict."""
    assert case["source"].startswith("https://github.com/") and case["log"].strip()
    p, logged = predict_vllm_kv_case(case), case["logged"]
    assert "tokens" in logged or "needed_gib" in logged
    if "tokens" in logged:
        assert 0.95 <= p["kv_gib"] / logged["kv_gib"] <= 1.15, p["kv_gib"]
    if "needed_gib" in logged:
        assert 0.95 <= p["needed_gib"] / logged["needed_gib"] <= 1.15, p["needed_gib"]
        assert p["verdict"] == logged["verdict"]


def test_memory_corpus_size():
    """Issue 13 asks for 25 memory cases with sources (recorded in benchmarks/results/public_logs.md); the floor
    keeps the corpus from shrinking below it."""
    vllm = yaml.safe_load((FIX / "vllm_memory.yaml").read_text())["cases"]
    assert len(vllm) + len(OLLAMA) + len(LLAMACPP) + len(VLLM_KV) >= 25


def _predicted(p):
    return predict_decode(p)


@pytest.mark.parametrize("point", POINTS, ids=[p["id"] for p in POINTS])
def test_speed_point_is_sourced_and_within_25_percent(point):
    assert point["source"].startswith("https://github.com/"), point["source"]
    ratio = _predicted(point) / point["tokens_per_s"]
    if point.get("outlier") or (point.get("known_miss") and not 0.75 <= ratio <= 1.25):
        pytest.xfail(point.get("outlier") or point["known_miss"])
    assert 0.75 <= ratio <= 1.25, ratio


def test_known_misses_are_still_misses():
    """A point recorded as missed must really miss the issue's 15% (else its note is stale and it belongs back in
    the check), and its note states the ratio it misses by. A known miss within 25% (the RTX 3080 UD-IQ2_XXS row,
    0.84 with the codebook floor) still has to pass the 25% check above."""
    for p in POINTS:
        if p.get("known_miss"):
            r = _predicted(p) / p["tokens_per_s"]
            assert not 0.85 <= r <= 1.15, p["id"]
            if 0.75 <= r <= 1.25:
                assert f"{r:.2f}" in p["known_miss"], (p["id"], r)


@pytest.mark.parametrize("backend", sorted(b for b, v in speed.BACKENDS.items() if v.fitted_on))
def test_backend_parameters_are_the_fit_of_the_points_not_held_out(backend):
    """speed.BACKENDS must be what fit_backend_build gives on the corpus minus held-out points and outliers, each
    point's era from its llama.cpp build (decode_speed.yaml's build:) and the backend's build_before, with the AWQ
    slope of the same fit (fit_kinds: 0 where the backend has fewer than 2 fitted AWQ points) and the legacy slope
    (0 there too, and where speed.LEGACY_SLOPE_EXCLUDED names the backend: speed.split_kinds)."""
    sel = [fit_point(p) for p in POINTS if p["backend"] == backend and not p.get("outlier") and not p.get("held_out")]
    split = speed.split_kinds(backend)
    b = speed.BACKENDS[backend]
    if b.bandwidth_exponent != 1.0:  # a line with a bandwidth exponent (confirm-bw): fitted with it
        a, f = speed.fit_exponent(sel, split)
        assert b.bandwidth_exponent == a
    else:
        f = speed.fit_kinds(sel, split)
        assert (f["quantized"], f["t0_ms"], f["16bit"], f["t0_before_ms"]) == speed.fit_backend_build(sel, split)
    assert len(sel) == b.fitted_on
    assert b.efficiency == pytest.approx(f["quantized"], abs=0.001) and b.t0_ms == pytest.approx(f["t0_ms"], abs=0.01)
    assert b.efficiency_16bit == pytest.approx(f["16bit"], abs=0.001)
    assert b.efficiency_int4_awq == pytest.approx(f["int4-awq"], abs=0.001)
    assert b.efficiency_legacy == pytest.approx(f["legacy"], abs=0.001)
    t0_before = f["t0_before_ms"]
    assert b.t0_before_ms == pytest.approx(t0_before, abs=0.01)
    assert bool(b.build_before) == bool(t0_before)  # a cut without a fitted term (or the reverse) is not a fit


def test_llamacpp_points_carry_their_build():
    """Every llama.cpp point (ggml backends) whose source dates it carries build: (estimated from date: where the
    source gives only that), except a month that straddles an era boundary of speed.py and 2025-2026 runs past every
    boundary; the builds are ones
    llama.cpp has had (b1 ... past the plan's default target) and the era split is the one the fit used."""
    from stackgen.plan.memory import LLAMA_TARGET_BUILD
    ggml = [p for p in POINTS if p["backend"] in ("cuda", "cuda-datacenter", "metal", "vulkan", "rocm", "cpu")]
    for p in ggml:
        if "build" in p:
            assert isinstance(p["build"], int) and 0 < p["build"] < LLAMA_TARGET_BUILD + 1000, p["id"]
        else:
            # nothing, a month alone, or a 2025-2026 run whose source names a commit only (corpus2's: the current
            # era either way, b2800 being May 2024)
            assert p.get("date") is None or len(str(p["date"])) == 7 or str(p["date"]) >= "2025", p["id"]
    assert sum("build" in p for p in ggml) >= 33
    cuda = [p for p in POINTS if p["backend"] == "cuda" and not p.get("held_out")]
    assert sum(older_build(p) for p in cuda) >= 2 and sum(not older_build(p) for p in cuda) >= 2


def _metal_fit_with_apple7(points: list[dict], apple7_term: bool) -> list[float]:
    """The Metal line's relative least squares (speed._relative_lsq, as fit_backend) with, when apple7_term, a
    quantized slope of its own for Apple7 GPUs (the M1 family): [1/e, 1/e_16bit(, 1/e_apple7), t0 s]."""
    rows, ts = [], []
    for p in points:
        x = p["bytes_mib"] * 2**20 / (p["bandwidth_gbs"] * 1e9)
        col = 1 if p.get("weights") == "16bit" else 2 if apple7_term and p["gpu"].startswith("M1") else 0
        row = [0.0] * (3 if apple7_term else 2)
        row[col] = x
        rows.append(row + [1.0])
        ts.append(1 / p["tokens_per_s"])
    return speed._relative_lsq(rows, ts)


def _metal_predict(sol: list[float], p: dict, apple7_term: bool) -> float:
    x = p["bytes_mib"] * 2**20 / (p["bandwidth_gbs"] * 1e9)
    col = 1 if p.get("weights") == "16bit" else 2 if apple7_term and p["gpu"].startswith("M1") else 0
    return 1 / (x * sol[col] + sol[-1])


def test_no_apple7_efficiency_term_for_metal():
    """metal-m1's pre-registered term A (benchmarks/results/metal-candidates.md): a quantized-weight efficiency of
    its own for Apple7 GPUs (M1 family), fitted with e, e_16bit and t0 on the fitted Metal points. It was to be
    adopted only if it is a penalty, improves leave-one-out within 15%, and puts more of the held-out M1-family
    metal-m1 points within 15%. It is a penalty (e_apple7 0.63 against 0.78) but leave-one-out falls (11 -> 10 of
    16) and the held-out M1 points fall (21 -> 13 of 26: at the 2023 build the M1 Pro / Max / Ultra read Q4_0 and
    Q8_0 like the M2 and M3 chips), so speed.py has no such term. This recomputes the comparison; if the corpus
    changes so that the term passes, this fails and the term should be revisited."""
    metal = [p for p in POINTS if p["backend"] == "metal" and not p.get("outlier")]
    fitted = [p for p in metal if today_fitted(p)]  # the 16-point line's set (confirm-metal fitted 50 more since)
    held_m1 = [p for p in metal if p.get("corpus") == "metal-m1" and p["gpu"].startswith("M1")]
    assert len(fitted) == 16 and len(held_m1) >= 26
    result = {}
    for term in (False, True):
        sol = _metal_fit_with_apple7(fitted, term)
        loo = sum(abs(_metal_predict(_metal_fit_with_apple7(fitted[:i] + fitted[i + 1:], term), p, term)
                      / p["tokens_per_s"] - 1) <= 0.15 for i, p in enumerate(fitted))
        held = sum(abs(_metal_predict(sol, p, term) / p["tokens_per_s"] - 1) <= 0.15 for p in held_m1)
        result[term] = (sol, loo, held)
    base, with_a7 = result[False], result[True]
    line = arm_backends(POINTS, today_fitted, False)["metal"][0]
    assert base[0][0] == pytest.approx(1 / line.efficiency, rel=0.002)  # the line speed.py had (0.734)
    assert 1 / with_a7[0][2] < 1 / with_a7[0][0]  # criterion 1 holds: a penalty
    assert with_a7[1] <= base[1] or with_a7[2] <= base[2]  # criteria 2 or 4 fail: not adopted


def _new_fitted_set():
    """The legacy-kind task's fitted set (rule 2, fixed before any fit): today's fitted points plus the 1st, 3rd, 5th,
    ... metal-m1 rows in fixture order; the 2nd, 4th, ... and every other held-out point stay held out."""
    m1 = [p for p in POINTS if p.get("corpus") == "metal-m1"]
    odd = {id(p) for p in m1[::2]}
    return lambda p: today_fitted(p) or id(p) in odd


@pytest.mark.usefixtures("bandwidths_before_confirm_m1")
def test_legacy_kind_follows_its_preregistered_rules():
    """The "legacy" kind (speed.LEGACY_QUANTS; benchmarks/results/metal-candidates.md, "legacy kind"), pre-registered
    before any fit: per backend, adopted only if, on the new fitted set (_new_fitted_set), the kind's arm against the
    same set without it (a) keeps the backend's held-out points within 15% (and raises Metal's) and (b) keeps its
    leave-one-out within 15%. CUDA passes (held out 22 -> 23 of 27, leave-one-out 14 -> 14 of 17); Metal fails (39 ->
    39 of 47, 50 -> 48 of 58), so speed.LEGACY_SLOPE_EXCLUDED named Metal alone. The other backends have no 2 fitted
    legacy points: the kind changes nothing there. Metal's exclusion was lifted since by confirm-metal's confirmatory
    rule (tests/plan/test_confirm_metal.py), which adopted metal-k's arm with the legacy slope on new points. This
    recomputes both arms; if the corpus changes so that a backend's verdict flips, this fails."""
    fitted = _new_fitted_set()
    # the data it was decided on: metal-k came after, and so did confirm-amd, whose adopted arms fitted vulkan-board's
    # and rocm-board's odd rows (their arms gave Vulkan and ROCm a legacy slope as those files pre-registered them)
    pts = [p for p in POINTS if p.get("corpus") not in ("metal-k", "vulkan-board", "rocm-board", "confirm-amd")]
    without, with_legacy = arm_figures(pts, fitted, False), arm_figures(pts, fitted, True)
    passed = set()
    for backend, w in with_legacy["backends"].items():
        o = without["backends"][backend]
        if not w["params"].efficiency_legacy:  # no slope of its own: the arms are the same line
            assert (w["held"], w["loo"]) == (o["held"], o["loo"]), backend
            continue
        rises = w["held"] > o["held"] if backend == "metal" else w["held"] >= o["held"]
        if rises and (w["loo"] or 0) >= (o["loo"] or 0):
            passed.add(backend)
    kinds = {b for b, w in with_legacy["backends"].items() if w["params"].efficiency_legacy}
    assert kinds == {"cuda", "metal"}
    assert passed == {"cuda"} and kinds - passed == {"metal"}
    # confirm-metal adopted Metal's legacy slope on new points since: no backend is excluded now
    assert not speed.LEGACY_SLOPE_EXCLUDED
    assert speed.BACKENDS["cuda"].efficiency_legacy and speed.BACKENDS["metal"].efficiency_legacy


@pytest.mark.usefixtures("bandwidths_before_confirm_m1")
def test_metal_m1_refit_was_reverted_for_the_earlier_points_floor():
    """Rule 4 of the legacy-kind task: the refit with metal-m1's odd rows fitted stands only if Metal's held-out
    count (its earlier held-out points + the even rows) does not fall against today's line. It does not (35 -> 39 of
    47, with the kinds as adopted: Metal without a legacy slope), but that refit moves the 115 earlier points from 94
    to 92 within 15% (the M1 Ultra 1B fitted row -10% -> -20%, the M2 Ultra 70B Q4_K_M +6% -> +17%, the held-out M4
    27B +11% -> +24%; the M4 8B -19% -> -11%), under their floor of 93, which may not be lowered: so the fixture kept
    every metal-m1 row held out, until confirm-metal's confirmatory rule adopted metal-k's arm (which fits metal-m1's
    odd rows) on new points. This recomputes the refit under the Metal line of the time; if it stops lowering that
    count, this fails and the refit should be revisited."""
    fitted = _new_fitted_set()
    held = [p for p in BEFORE_M1 if p["backend"] == "metal" and not p.get("outlier") and not fitted(p)
            and p.get("corpus") not in ("metal-k", "confirm-metal")  # that task's held-out set (these came after)
            and not str(p.get("corpus", "")).startswith("confirm-bw")]
    assert len(held) == 47

    def close(ps):
        return sum(abs(predict_decode(p) / p["tokens_per_s"] - 1) <= 0.15 for p in ps)
    old = [p for p in POINTS if not p.get("corpus")]
    with metal_line_before_confirm():
        today = close(held)
        old_today = close(old)
    refit = arm_backends(POINTS, fitted, False)["metal"][0]  # Metal as adopted then: no legacy slope
    with linear_lines(), lines({"metal": refit}):
        assert close(held) >= today  # rule 4 alone would keep the refit
        assert close(old) < 93 <= old_today  # but the earlier points' floor would fall
    # confirm-metal fitted the odd rows since (metal-k's arm, adopted by its confirmatory rule)
    m1 = [p for p in POINTS if p.get("corpus") == "metal-m1"]
    assert [not p.get("held_out") for p in m1] == [i % 2 == 0 for i in range(len(m1))]


@pytest.mark.usefixtures("bandwidths_before_confirm_m1")
def test_cuda_board_refit_follows_its_preregistered_rules():
    """Rule 4 of cuda-board (benchmarks/results/cuda-board-candidates.md, fixed before any prediction): the 1st, 3rd,
    5th ... of the board's rows in fixture order join their backend's fit, the 2nd, 4th ... stay held out; per backend
    the refit is adopted only if (a) the first 115 points keep at least 94 within 15%, (b) the backend's held-out
    points (its earlier ones plus the even rows) within 15% rise against today's line, (c) every other corpus keeps
    its SPEED_FLOORS count and (d) the backend's leave-one-out within-15% share over its fitted points does not fall.
    As recorded: cuda (17 -> 31 fitted) keeps 35 of 41 held out within 15% (no rise) and moves the first 115 from 94
    to 93; cuda-datacenter (2 -> 5 fitted, the K80 among them) 2 -> 1 of 4 held out, the first 115 to 92. Since the
    K80 is an outlier (outside the CUDA lines' domain, compute capability 3.7 < 5.0; it leaves the refit's fitted set)
    cuda-datacenter's refit keeps the first 115 at 94 ((a) holds) and still drops its held out 2 -> 1 ((b) fails). Neither is
    adopted: both lines stand and every row stays held out. This recomputes both arms; if the corpus changes so that
    a backend's verdict flips, this fails and the refit should be revisited.
    The rule is recomputed on the corpus it was decided on (every point but the later confirm-cuda corpus's): its
    (b) counts a backend's held-out points, and confirm-cuda's new ones would change that count after the fact. The
    arms were then put to the lead's confirmatory rule on confirm-cuda's new points (tests/plan/test_confirm_cuda.py,
    benchmarks/results/confirm-cuda-candidates.md): neither was adopted there either (first no decision on 5 + 5
    new points; then, with confcuda2's second collection, 8 + 11, A0 kept for both backends by rule 3)."""
    before = [p for p in POINTS if not str(p.get("corpus")).startswith("confirm-")]
    board = [p for p in before if p.get("corpus") == "cuda-board"]
    odd = {id(p) for p in board[::2]}

    def fitted(p):
        return (not p.get("outlier") and not p.get("held_out")) or id(p) in odd
    with metal_line_before_confirm():  # decided under the Metal line of the time, against the floors of the time
        arms = refit_arm(before, fitted, ("cuda", "cuda-datacenter"))
    floors = {c: w for c, _, w, _ in FLOORS_BEFORE_CONFIRM if c not in (None, "cuda-board")}
    verdict = {}
    for backend, a in arms.items():
        t, r = a["today"], a["refit"]
        rules = (r["corpora"][None] >= 94, r["held"] > t["held"],
                 all(r["corpora"][c] >= w for c, w in floors.items()),
                 r["loo"][0] * t["loo"][1] >= t["loo"][0] * r["loo"][1])
        verdict[backend] = rules
        assert t["corpora"][None] >= 94  # today's line keeps the first 115's floor
    assert not all(verdict["cuda"]) and not all(verdict["cuda-datacenter"])
    assert not verdict["cuda"][0] and not verdict["cuda"][1]  # the reasons recorded: (a) and (b) fail
    assert verdict["cuda-datacenter"][0] and not verdict["cuda-datacenter"][1]
    assert all(p.get("held_out") for p in board)
    assert speed.BACKENDS["cuda"].fitted_on == 17 and speed.BACKENDS["cuda-datacenter"].fitted_on == 2


def _metal_k_arm():
    """metal-k's rule 2 (benchmarks/results/metal-k-candidates.md, fixed before any prediction): Metal's fitted set is
    today's 16 points + metal-m1's 1st, 3rd, ... rows + metal-k's 1st, 3rd, ... rows in fixture order; every other
    Metal point is held out."""
    odd = {id(p) for tag in ("metal-m1", "metal-k") for p in [q for q in POINTS if q.get("corpus") == tag][::2]}
    return lambda p: today_fitted(p) or id(p) in odd


@pytest.mark.usefixtures("bandwidths_before_confirm_m1")
def test_metal_legacy_kind_retest_with_metal_k():
    """metal-k's pre-registered re-test of Metal's legacy kind (metal-k-candidates.md, rule 2): adopted only if, with
    the legacy slope on _metal_k_arm's fitted set, (a) Metal's held-out points within 15% rise against today's line,
    (b) Metal's leave-one-out share within 15% does not fall below today's (11 of 16), (c) the first 115 points keep
    94 within 15% and (d) every other SPEED_FLOORS row holds. (a) 38 -> 43 of 54, (b) 53 of 66 = 0.80 against 0.69
    and (d) hold, (c) fails (94 -> 92: the fitted M1 Ultra 1B row -10% -> -18%, the held-out M4 27B UD-Q3_K_XL +11% -> +16%),
    so Metal kept no legacy slope then. That guard penalised any refit for the in-sample fit it gives up, so the
    lead fixed a confirmatory rule before new points existed (benchmarks/results/confirm-metal-candidates.md): on 6
    new held-out points this arm scored 4 within 15% against today's line's 1 and kept the whole corpus's count, and
    was adopted by that rule (tests/plan/test_confirm_metal.py): the fixture fits metal-k's and metal-m1's odd rows
    and speed.py has Metal's legacy slope since. This recomputes every condition of metal-k's own rule, as decided
    then (the 16-point line, the floors of the time, the points of the time); if they all hold, this fails."""
    fitted = _metal_k_arm()
    then = [p for p in BEFORE_M1 if p.get("corpus") != "confirm-metal" and not str(p.get("corpus", "")).startswith("confirm-bw")]
    metal = [p for p in then if p["backend"] == "metal" and not p.get("outlier")]
    held = [p for p in metal if not fitted(p)]
    assert (len(held), sum(map(fitted, metal))) == (54, 66)

    def close(ps):
        return sum(abs(predict_decode(p) / p["tokens_per_s"] - 1) <= 0.15 for p in ps)
    with metal_line_before_confirm():
        today = {"held": close(held), "loo": arm_figures(POINTS, today_fitted, False)["backends"]["metal"]}
    arm = arm_figures(then, fitted, True)  # the points then
    m = arm["backends"]["metal"]
    assert m["params"].efficiency_legacy > 0  # the arm gives Metal its legacy slope
    with linear_lines(), lines({"metal": m["params"]}):
        held_arm = close(held)
        first = close([p for p in POINTS if not p.get("corpus")])
        floors = {c: close([p for p in POINTS if p.get("corpus") == c]) for c, *_ in FLOORS_BEFORE_CONFIRM if c}
    assert held_arm == m["held"]
    a = held_arm > today["held"]
    b = m["loo"] / m["fitted_n"] >= today["loo"]["loo"] / today["loo"]["fitted_n"]
    c = first >= 94
    d = all(floors[c_] >= w for c_, _, w, _ in FLOORS_BEFORE_CONFIRM if c_ and c_ != "metal-k")
    assert (a, b, c, d) == (True, True, False, True), (held_arm, today["held"], m["loo"], first, floors)
    assert (held_arm, today["held"], m["loo"], first) == (43, 38, 53, 92)
    # adopted since by confirm-metal's confirmatory rule: the legacy slope, metal-k's odd rows fitted
    assert "metal" not in speed.LEGACY_SLOPE_EXCLUDED and speed.BACKENDS["metal"].efficiency_legacy
    mk = [p for p in POINTS if p.get("corpus") == "metal-k"]
    assert [not p.get("held_out") for p in mk] == [i % 2 == 0 for i in range(len(mk))]


def test_fit_never_returns_a_negative_overhead():
    """Two points whose straight line crosses below zero: the fit is the through-origin one (t0 = 0)."""
    pts = [(3.82e9, 347.0, 56.29), (4.92e9, 760.0, 111.95)]
    e, t0, e16 = speed.fit_backend(pts)
    assert t0 == 0.0 and 0.6 < e < 0.7 and e16 == 0.0


# Lines with no public point of their own for a figure take another line's (speed.py says which and why): SGLang's
# prefill and batched-decode figures are vLLM's (its 2 TTFT points are held out, it has no service curve).
BORROWED = {"sglang": "vllm"}


def test_engine_points_check_the_line_their_plans_use():
    """Every fixture backend is a fitted line of its own (speed_line is the identity on the corpus), and an engine
    with its own kernels plans on the line its points fit: SGLang's plans decode on "sglang" (engines/sglang.py
    speed_backend), fitted on the odd-numbered of its 16 rows in fixture order and checked on the even-numbered
    ones (decode_speed.yaml's rule, fixed before the fit); its prefill and batched-decode figures are vLLM's
    (BORROWED), its one-request TTFTs all held out."""
    from stackgen import engines
    assert {p["backend"] for p in POINTS + PREFILL} <= set(speed.BACKENDS)
    assert all(speed_line(p["backend"]) == p["backend"] for p in POINTS + PREFILL)
    eng = engines.get("sglang")
    assert eng.speed_backend == "sglang" and speed.backend_for(eng.speed_backend, "nvidia", "datacenter") == "sglang"
    rows = [p for p in POINTS if p["backend"] == "sglang"]
    assert len(rows) == 16
    assert [not p.get("held_out") for p in rows] == [i % 2 == 0 for i in range(16)]
    assert speed.BACKENDS["sglang"].fitted_on == 8
    assert all(p.get("held_out") for p in PREFILL if p["backend"] == "sglang")
    for backend, lender in BORROWED.items():
        b, other = speed.BACKENDS[backend], speed.BACKENDS[lender]
        assert (b.prefill_mfu, b.batch_mfu, b.batch_mfu_16bit) == (other.prefill_mfu, other.batch_mfu,
                                                                 other.batch_mfu_16bit)


# Each corpus's floor on single-stream points within 15% (the goal is 90% of all points): (corpus tag,
# points at least, within 15% at least, share within 15% at least). None is the points without a `corpus:` tag (the
# first 115). A corpus's row is set when its points land (each one's candidates file says how they were chosen) and
# is raised, never lowered, as the model improves; the history of each count is in benchmarks/results/public_logs.md
# and the candidates files. The counts as of each corpus's landing and since:
# - None (the first 115: 75 before corpus2, its 40 held-out 2025-2026 points): 76 -> 88 (SGLang's line) -> 91 (its
#   AWQ slope) -> 93 (tensor parallel's all-reduces) -> 94 (CUDA's legacy slope; vLLM's V0 era moved one in, one out).
# - metal-m1 (metal-candidates.md): 83 held-out Apple-GPU points, 62 within 15% (the M2-M4 non-Ultra Q8_0/Q4_0 rows
#   15-19% under, the M1 Ultra rows over, issue 27525's M1 Max Q4_1/Q3_K_M over).
# - iquant (iquant-candidates.md): 11 held-out CUDA i-quant points and their controls, 7 -> 11 with the codebook floor.
# - vllm2 (vllm-candidates.md): 19 vLLM points, 2 -> 10 with the V0-era term; its split into 9 fitted and 10 held out
#   was fixed before the fit and is checked below (each half keeps 5 within 15%).
# - cuda-board (cuda-board-candidates.md): 34 held-out rows of llama.cpp's CUDA scoreboard (discussion 15013, llama
#   7B Q4_0 tg128, Kepler to Blackwell), 24 within 15% (Ampere 5/5, Ada 7/7, Blackwell 10/11; Turing 1/4, the
#   datacenter line's current-build L40/A40/A30/V100 under, the K80 and M40 without dp4a over).
# - rocm-board (rocm-board-candidates.md): 7 ROCm llama 7B Q4_0 tg128 rows (discussion 15021's scoreboard as
#   quoted, issue 13565), 3 within 15% on the 2-point line; its pre-registered refit failed its own rule 4b, then was
#   adopted by confirm-amd's confirmatory rule (its 1st, 3rd, 5th, 7th rows fitted): 4 within 15% (the MI300X +35% ->
#   +2% comes in; the 7900 XTX -24%, MI210 +33%, MI100 +31% stay out). The floor rises 3 -> 4.
# - metal-k (metal-k-candidates.md): 15 held-out Apple-GPU points across quant families, 7 within 15% (ggml CI's M4
#   pythia 1.4B in 11 types: F16, Q2_K, Q3_K within; Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 and Q4_K/Q5_K/Q6_K 16-22% under; PR
#   2917's M2 Ultra Q8_0/Q4_0/Q4_1 and the M3 Ultra 70B Q4_K_M within).
# - mlx-lm (mlx-lm-candidates.md): 33 held-out mlx-lm points (M1 Max/Pro/Ultra, M2 Ultra, M3 Max; 29 4-bit, 4 8-bit),
#   24 within 15% on today's MLX line: the 19 M3 Max 70B rows at 0.3k-30k context all in, the March 2024 PR 515 rows
#   (2.4-3.5x over) and the M1 Ultra 64 GB LM Studio rows (+25..+32%) out. Its optional refit arm failed its rules
#   (test_mlx_lm_refit_arm_failed_its_rules).
# - vulkan-board (vulkan-board-candidates.md): 13 rows of llama.cpp discussion 10879's Vulkan summary (llama 2 7B Q4_0
#   tg128, FA off), 8 within 15% (the Vega 20 MI50 / Radeon Pro VII +66% / +70%, Arc B580 +21%, RX 7900 XT +17%,
#   R9700 -19% outside); its pre-registered refit arm failed its own rule 4b, then was adopted by confirm-amd's
#   confirmatory rule (its odd rows fitted): still 8 within 15% (the Vega 20 pair +76% / +80%, B580 +30% out).
# - vllm-now (vllm-now-candidates.md): 14 held-out rows of current vLLM (>= 0.8, V1 the default): 6 of 2 x H100
#   72B bf16 (+4%), 4 of RTX 4090 7B bf16 (-13..-14%), 4 of a Jetson AGX Thor (8B bf16 -20%, GPTQ-Int4 -23%, AWQ +14%,
#   32B AWQ -2%): 12 within 15% on the line as it was; 13 after rule 2's refit (its odd rows fitted: H100 +10%, RTX
#   4090 -9%, Thor 8B bf16 -14%, AWQ +7%, 32B AWQ -7%; the Thor GPTQ-Int4 row -21% the one outside).
# - confirm-cuda (confirm-cuda-candidates.md): new held-out NVIDIA points taken by the lead's confirmatory rule to
#   decide cuda-board's refit arms; 15 taken, 5 of them removed by the lead because their sources are not citable (a
#   search index's stored-file ids, no public repository or URL; their ratios are in the candidates file): 10 left,
#   4 within 15% (consumer 4 of 5: the GTX 1080 1.2B +49% out; datacenter 0 of 5: the current-build V100 / A100
#   1.2B 40-47% under the 3.09 ms line, the L40S 8B -27%, the P100 +33%). Under 6 new points per backend: no decision
#   (rule 4). A second collection (confcuda2, the same rule) added 9: ggml CI's V100 PCIe (b4343, pythia 2.8B F16 and
#   5 legacy types; the 5 legacy rows within 15%, +1..+11%, F16 -16%) and one RTX 3060 table (3 rows, all within,
#   -15..+8%): 19 points, 12 within 15% (consumer 7 of 8, datacenter 5 of 11). With 8 and 11 the rule decided: A0
#   kept for both backends (tests/plan/test_confirm_cuda.py); the floor rises 4 -> 12.
# - confirm-amd (confirm-amd-candidates.md): 17 new held-out rows (Vulkan 8, ROCm 9: RX 7900 XTX, RX 7900 GRE, Radeon
#   8060S; ROCm/ROCm issues 4868, 5104, 4748 and visorcraft/strix-halo-llm-perf), taken and committed before any
#   prediction, that decided the two refit arms above by the lead's confirmatory rule (tests/plan/
#   test_confirm_confirm_amd.py): 16 within 15% with both arms adopted (11 on the lines before); the AMDVLK 7900 XTX
#   8B row +31% the one outside.
# - confirm-metal (confirm-metal-candidates.md): 6 held-out rows of ggml CI's M4 (b4545, pythia 1.4B F16/Q8_0/Q4_0/
#   Q4_1/Q5_0/Q5_1), taken to decide by a confirmatory rule fixed before they existed between today's Metal line and
#   metal-k's two arms: 1 / 2 / 4 within 15% (mean |ln| 0.216 / 0.159 / 0.142), the whole corpus 258 / 272 / 272 of
#   350: the legacy-slope arm adopted (test_confirm_metal.py). 4 within 15% with it (F16, Q8_0, Q5_0, Q5_1; Q4_0 and
#   Q4_1 -16%). The adopted line moves other rows, so three floors move with it: metal-m1 62 -> 72 and metal-k 7 -> 10
#   (up), and the first 115 94 -> 92 (down, by the adopted arm alone: the fitted M1 Ultra 1B row -10% -> -18%, the
#   held-out M4 27B UD-Q3_K_XL +11% -> +16%, as metal-k recorded; the rule's whole-corpus condition held, 258 -> 272).
# - confirm-bw-metal-a (confirm-bw-metal-a-candidates.md): 11 new held-out Metal rows from the ggml-org organisation,
#   taken blind for the confirm-bw rule (confirm-bw-candidates.md): ggml CI's M4 (b4826, pythia 1.4B F16/Q8_0/Q4_0/
#   Q4_1/Q5_0/Q5_1), PR 5021's M3 Pro 18-core (Llama 3 8B Q4_K_M, fa 0/1, tg 128/256) and PR 2891's M2 Ultra master
#   column (llama2 7B F16/Q8_0 tg 64). 7 within 15% on today's line: the M4 F16/Q8_0/Q5_0/Q5_1 (0.86-0.92), the M3
#   Pro fa 0 rows (0.87) and the M2 Ultra Q8_0 (1.13) in; the M4 Q4_0/Q4_1 (0.83) and the M3 Pro fa 1 row (0.84)
#   under, the M2 Ultra F16 over (1.46, a known miss).
# - confirm-bw-metal-b (confirm-bw-metal-b-candidates.md): 23 new held-out llama.cpp Metal rows from outside ggml-org,
#   taken blind for the lead's confirm-bw rule (confirm-bw-candidates.md): geerlingguy's M3 Ultra 512GB README rows
#   (3), qwen38-mtp's M3 Ultra 96GB row, XiongjieDai's 2023 Llama 2 notebooks (M3 Max 4, M3 2, M2 Ultra 6, M1 Max
#   24-core 3) and May-2024 Llama 3 ./main cells (M1, M1 Max, M2 Ultra, M3 Max). 16 within 15% on today's lines
#   (mean |ln| 0.128); outside: the four M1 Max rows (+35..+70%), the M2 Ultra 13B Q4_0 (+22%) and 8B Q4_K_M (+16%),
#   the M3 Ultra 96GB Q6_K (+16%).
# - confirm-bw-cuda (confirm-bw-cuda-candidates.md): 9 new held-out consumer-CUDA rows (GTX 1060 to RTX 5090, 192-1792
#   GB/s; 6 sources) taken blind for step 1 of the confirm-bw rule (confirm-bw-candidates.md), 4 within 15% on
#   today's lines (the RTX 3090 / 3080 / 5090 / 4090 27B rows); out: the RTX 5060 Ti 7B and both RTX 4060 Ti 27B rows
#   under (predicted/measured 0.773, 0.791, 0.775), the GTX 1060 7B (1.235) and PR 12183's RTX 4090 3B Q4_0 (1.354,
#   the one past 25%, a known miss) over.
# - confirm-bw ADOPTED Metal's bandwidth exponent (confirm-bw-candidates.md, tests/plan/test_confirm_bw.py: on the 21
#   new points its rule scores, 16 -> 20 within 15%; the whole corpus 328 -> 345 of 429), and the floors it moves
#   were set to the recorded counts: the first 115 92 -> 93, metal-m1 72 -> 77, metal-k 10 -> 14, confirm-metal 4 -> 6,
#   confirm-bw-metal-a 7 -> 10, confirm-bw-metal-b 16 -> 18 (none fell). CUDA's exponent was not adopted.
# - confirm-graphs (confirm-graphs-candidates.md, its "Step 1" section): 10 new held-out NVIDIA rows taken blind for
#   step 1 of the lead's confirm-graphs rule (CUDA graphs by GPU architecture): ggml CI's V100 PCIe (b4834, pythia
#   2.8B F16 and 5 legacy types), willettAMT's L40S and A30 single-GPU files (b7199, qwen3 8B Q5_K_M) and PR 4766's P40
#   Q3_K_S / Q4_K_S rows. 7 within 15% on today's lines: the V100 legacy rows (0.99-1.07), the A30 (1.07), the P40
#   Q4_K_S (1.09); out: the V100 F16 (0.82), the L40S (0.73) and the P40 Q3_K_S (2.41), the last two known misses.
# - confirm-tier-b (confirm-tier-b-candidates.md): 12 new held-out GDDR-datacenter rows from outside ggml-org, taken
#   blind for step 1 of the lead's confirm-tier rule (confirm-tier-candidates.md): XiongjieDai's May-2024 L40S and A40
#   notebooks (b2834 / b2833: the ./main cell and llama-bench tg 512 of Llama 3 8B Q4_K_M / F16 and 70B Q4_K_M, 4 each),
#   willettAMT's orcaga05 L40S (b7199, qwen3 8B Q5_K_M), LLMKube's GKE L4 (Llama 3.2 3B Q8_0) and two L40S handoffs of
#   deven367/agent-handoffs (Qwen3.8-27B Q4_K_M, qwen35 9B Q8_0). 3 within 15% on today's lines (the A40 70B 0.92 and
#   ./main 0.88, the L40S 70B 0.85); every other row under (0.70-0.83), three of them past 25%, known misses (the L40S
#   8B F16 0.749, willett's L40S 0.73, the L40S 9B Q8_0 0.70).
# - confirm-tier ADOPTED T1 (confirm-tier-candidates.md, tests/plan/test_confirm_tier.py: a GDDR datacenter GPU plans
#   on the consumer CUDA line; on the 10 new points its rule scores, 2 -> 9 within 15%; the whole corpus 355 -> 367 of
#   451), and the floors it moves were set to the recorded counts: cuda-board 24 -> 26 (the L40 and A40), confirm-cuda
#   12 -> 13 and confirm-graphs 7 -> 8 (their L40S rows), confirm-tier-b 3 -> 11 (none fell; the Tesla M40, GDDR5,
#   1.16 -> 1.44, was outside 15% on either line).
# - confirm-m1-metal / confirm-m1-mlx (confirm-m1-metal-candidates.md, confirm-m1-mlx-candidates.md): 15 new held-out
#   M1 Max / M1 Ultra rows taken blind for step 1 of the lead's confirm-m1 rule (confirm-m1-candidates.md): XiongjieDai's
#   LLaMA-1 M1 Max notebook (build 1026, 4 rows), AtomGradient's M1 Max llama-bench study (3 Qwen3.5 Q8_0 rows),
#   trycua/cua's M1 Ultra bare-metal legs (b10167, 2 rows) and lablup/mlxcel's mlx-lm 0.31.3 M1 Ultra sweep (6 rows).
#   4 within 15% on today's reading (datasheet bandwidth), 6 on the rule's arm.
# - confirm-m1 ADOPTED its arm (tests/plan/test_confirm_m1.py: an M1 Max / M1 Ultra decodes at 0.86 of its datasheet
#   bandwidth; 4 -> 6 of its 15 new points, the whole corpus 371 -> 384 of 466), and the floors it moves were set to
#   the recorded counts: the first 115 93 -> 96, metal-m1 77 -> 80, mlx-lm 24 -> 29 (none fell).
# - confirm-gfx9 (confirm-gfx9-candidates.md): 10 new held-out gfx906 rows taken blind for step 1 of the lead's
#   confirm-gfx9 rule: kyuz0/mi50-gfx906-toolboxes' MI50 ROCm BF16 rows (6), llama.cpp PR 22933's Radeon Pro VII
#   Vulkan rows (2) and PR 21024's Windows Radeon Pro VII rows (2); none within 15% at the datasheet bandwidth.
# - confirm-gfx9 ADOPTED its arm (tests/plan/test_confirm_gfx9.py: AMD gfx906 / gfx908 / gfx90a parts decode at 0.55 of
#   their datasheet bandwidth on llama.cpp's ROCm and Vulkan lines; 0 -> 2 of its 10 new points), and the floors it
#   moves were set to the recorded counts: rocm-board 4 -> 6 (the MI100, MI210), vulkan-board 8 -> 10 (the MI50, Radeon
#   Pro VII), confirm-gfx9 2 of 10 (none fell).
# - confirm-graphs2 (confirm-graphs2-candidates.md): 9 new held-out HBM datacenter rows taken blind for step 1 of the
#   lead's confirm-graphs2 rule (XiongjieDai's A100 PCIe / SXM notebooks at b2836-2837, 6; deven367/agent-handoffs'
#   H100 SXM5 / NVL rows, 3; two microbatch-1 pp128 V100 rows the lead removed as not tg rows); 3 within 15%. No
#   decision (all in one group): the lines unchanged.
# - confirm-vllm-rocm (confirm-vllm-rocm-candidates.md): 4 new held-out vLLM rows on AMD GPUs taken blind for step 1 of
#   the lead's confirm-vllm-rocm rule (lhl/strix-halo-testing's vLLM c=1 TPOT, unergybot/BestBox's 3 one-request
#   rows), all on one Radeon 8060S: 2 within 15%, 3 within the vllm line's stated 31%, over-predicted (mean ln +0.24).
#   No decision (fewer than 6 points, one GPU model): the plan's extrapolation reason stays; nothing is scored
#   differently.
SPEED_FLOORS = [
    (None, 115, 96, 0.0),
    ("metal-m1", 83, 80, 0.96),
    ("iquant", 11, 11, 0.0),
    ("vllm2", 19, 11, 0.57),
    ("cuda-board", 34, 26, 0.76),
    ("rocm-board", 7, 6, 0.85),
    ("metal-k", 15, 14, 0.93),
    ("mlx-lm", 33, 29, 0.87),
    ("vulkan-board", 13, 10, 0.76),
    ("vllm-now", 14, 13, 0.92),
    ("confirm-cuda", 19, 13, 0.68),
    ("confirm-amd", 17, 16, 0.94),
    ("confirm-metal", 6, 6, 1.0),
    ("confirm-bw-metal-a", 11, 10, 0.90),
    ("confirm-bw-metal-b", 23, 18, 0.78),
    ("confirm-bw-cuda", 9, 4, 0.44),
    ("confirm-graphs", 10, 8, 0.80),
    ("confirm-tier-b", 12, 11, 0.91),
    ("confirm-m1-metal", 9, 3, 0.33),
    ("confirm-m1-mlx", 6, 3, 0.50),
    ("confirm-gfx9", 10, 2, 0.20),
    ("confirm-graphs2", 9, 3, 0.33),
    ("confirm-vllm-rocm", 4, 2, 0.50),
]
# The rows as they stood before the confirmatory corpora (confirm-cuda, confirm-amd, confirm-metal) came in and
# confirm-metal moved Metal's line: the earlier corpora's refit decisions were made against them under the 16-point
# Metal line, and their tests recompute them in metal_line_before_confirm().
_THEN = {None: (94, 0.0), "metal-m1": (62, 0.74), "metal-k": (7, 0.46), "rocm-board": (3, 0.42), "mlx-lm": (24, 0.72),
         "vulkan-board": (8, 0.61)}
FLOORS_BEFORE_CONFIRM = [(c, n, *_THEN.get(c, (w, sh))) for c, n, w, sh in SPEED_FLOORS
                         if not str(c).startswith("confirm-")]


@pytest.mark.parametrize("corpus, n, within, share", SPEED_FLOORS, ids=[str(c) for c, *_ in SPEED_FLOORS])
def test_speed_within_15_percent_share(corpus, n, within, share):
    """Per corpus: at least n points, at least `within` of them within 15% of the measured rate, and that share."""
    ps = [p for p in POINTS if p.get("corpus") == corpus]
    assert len(ps) >= n
    close = sum(abs(_predicted(p) / p["tokens_per_s"] - 1) <= 0.15 for p in ps)
    assert close >= within and close / len(ps) >= share, (corpus, close, len(ps))


def _rocm_line(fitted) -> speed.Backend:
    """speed.BACKENDS["rocm"] refitted (fit_kinds, the backend's split_kinds) on the ROCm points `fitted(p)` selects."""
    from dataclasses import replace
    pts = [p for p in POINTS if p["backend"] == "rocm" and not p.get("outlier") and fitted(p)]
    f = speed.fit_kinds([fit_point(p) for p in pts], speed.split_kinds("rocm"))
    return replace(speed.BACKENDS["rocm"], efficiency=f["quantized"], t0_ms=f["t0_ms"], efficiency_16bit=f["16bit"],
                   efficiency_int4_awq=f["int4-awq"], efficiency_legacy=f["legacy"], t0_before_ms=f["t0_before_ms"],
                   fitted_on=len(pts))


def _rocm_loo(fitted) -> int | None:
    """Leave-one-out within 15% over the ROCm points `fitted(p)` selects (None under 3: 2 points fix both
    parameters exactly)."""
    pts = [p for p in POINTS if p["backend"] == "rocm" and not p.get("outlier") and fitted(p)]
    if len(pts) < 3:
        return None
    out = 0
    for i, p in enumerate(pts):
        line = _rocm_line(lambda q, skip=p: fitted(q) and q is not skip)
        t = p["bytes_mib"] * 2**20 / (line.efficiency_for(p.get("weights", "quantized")) * p["bandwidth_gbs"] * 1e9)
        out += abs(1 / (t + line.t0_ms / 1000) / p["tokens_per_s"] - 1) <= 0.15
    return out


def _assert_adopted(board: list[dict], backend: str, arm_line, fitted_on: int) -> None:
    """An arm adopted by the confirmatory rule (confirm-amd): the board's 1st, 3rd, ... rows fitted, the rest held
    out, and speed.BACKENDS[backend] that arm's line."""
    assert [not p.get("held_out") for p in board] == [i % 2 == 0 for i in range(len(board))]
    cur = speed.BACKENDS[backend]
    assert cur.fitted_on == arm_line.fitted_on == fitted_on
    assert (cur.efficiency, cur.t0_ms, cur.efficiency_legacy) == (pytest.approx(arm_line.efficiency, abs=0.001),
                                                                  pytest.approx(arm_line.t0_ms, abs=0.01),
                                                                  pytest.approx(arm_line.efficiency_legacy, abs=0.001))


@pytest.mark.usefixtures("bandwidths_before_confirm_m1")
def test_rocm_board_refit_follows_its_preregistered_rule():
    """rocm-board's rule 4 (benchmarks/results/rocm-board-candidates.md, fixed before any prediction): the corpus's
    1st, 3rd, 5th, 7th rows in fixture order join the ROCm fit, the 2nd, 4th, 6th stay held out; adopted only if (a)
    the points without a corpus tag keep 94 within 15%, (b) ROCm's held-out points (its earlier held-out ones plus the
    even rows) within 15% rise against the line before, (c) every other corpus keeps its SPEED_FLOORS count, (d) the
    leave-one-out within 15% over ROCm's fitted points does not fall. (a) and (c) hold; (b) fails, 4 -> 4 of 8 (the
    refit line, e 0.82, e_legacy 0.89, t0 3.42 ms, brings MI300X in but neither the 7900 XTX, MI210 and MI100 rows
    nor the RX 9070 XT 8B), so by its own rule it was not adopted. The lead's confirmatory rule then decided this
    fixed arm against the 2-point line on new points (confirm-amd, benchmarks/results/confirm-amd-candidates.md;
    tests/plan/test_confirm_confirm_amd.py): 9 of 9 against 5 of 9 within 15%, so it WAS adopted there: the odd rows
    are fitted and speed.BACKENDS["rocm"] is this arm. This recomputes the board's own rule on the data it was decided
    on (the confirm-amd rows aside), and checks the adopted line is the arm."""
    board = [p for p in BEFORE_M1 if p.get("corpus") == "rocm-board"]
    assert len(board) == 7 and all(p["backend"] == "rocm" for p in board)
    odd = {id(p) for p in board[::2]}

    def before(p):  # the fitted set before the adoption: today's less the arm's rows
        return not p.get("held_out") and id(p) not in odd

    def refit(p):
        return before(p) or id(p) in odd
    held = [p for p in BEFORE_M1 if p["backend"] == "rocm" and not p.get("outlier") and not refit(p)
            and p.get("corpus") != "confirm-amd"]
    assert len(held) == 8
    floors = {c: w for c, _, w, _ in FLOORS_BEFORE_CONFIRM}  # rocm-board's 3: the floor its rule 4c was checked against

    def counts(line):
        with lines({"rocm": line}):
            close = {id(p): abs(_predicted(p) / p["tokens_per_s"] - 1) <= 0.15 for p in BEFORE_M1}
        by_corpus = {c: sum(close[id(p)] for p in BEFORE_M1 if p.get("corpus") == c) for c, *_ in FLOORS_BEFORE_CONFIRM}
        return by_corpus, sum(close[id(p)] for p in held)
    old_line, arm_line = _rocm_line(before), _rocm_line(refit)
    assert (old_line.efficiency, old_line.t0_ms, old_line.fitted_on) == (pytest.approx(0.700, abs=0.001),
                                                                         pytest.approx(2.14, abs=0.01), 2)
    with metal_line_before_confirm():  # decided under the Metal line of the time
        (now, held_now), (new, held_new) = counts(old_line), counts(arm_line)
    assert (now[None], now["rocm-board"]) == (94, 3)  # the line before: the counts rule 4 was checked against
    a = new[None] >= 94
    b = held_new > held_now
    c = all(new[corpus] >= floors[corpus] for corpus, *_ in FLOORS_BEFORE_CONFIRM if corpus != "rocm-board")
    loo_now, loo_new = _rocm_loo(before), _rocm_loo(refit)
    n_new = arm_line.fitted_on
    d = loo_now is None or loo_new / n_new >= loo_now / old_line.fitted_on  # before: 2 points, no LOO
    assert (a, b, c) == (True, False, True) and (held_now, held_new) == (4, 4) and (loo_new, n_new) == (6, 6) and d
    assert not (a and b and c and d)  # its own rule: not adopted
    _assert_adopted(board, "rocm", arm_line, 6)


def test_every_speed_point_has_a_floor():
    """A new corpus tag without a row in SPEED_FLOORS would be checked by nothing."""
    tags = {p.get("corpus") for p in POINTS}
    assert tags == {c for c, *_ in SPEED_FLOORS}


def test_held_out_corpora_stay_held_out():
    """Every corpus after the first 115 but vllm2 was taken as held-out points (its candidates file); a refit adopted
    by its pre-registered rule or by the lead's confirmatory rule fits its 1st, 3rd, ... rows and this says so:
    vllm-now's own (tests/plan/test_vllm_now.py); vulkan-board's and rocm-board's by confirm-amd
    (test_confirm_confirm_amd.py); metal-k's arm, metal-m1's and metal-k's odd rows, by confirm-metal
    (test_confirm_metal.py). vllm2's fitted/held-out split was fixed before the fit (vllm-candidates.md), each half
    keeping 5 within 15%."""
    def close(ps):
        return sum(abs(_predicted(p) / p["tokens_per_s"] - 1) <= 0.15 for p in ps)
    refitted = ("vllm-now", "vulkan-board", "rocm-board", "metal-m1", "metal-k")
    assert all(p.get("held_out") for p in POINTS if p.get("corpus") not in (None, "vllm2") + refitted)
    for tag in refitted:
        rows = [p for p in POINTS if p.get("corpus") == tag]
        assert [not p.get("held_out") for p in rows] == [i % 2 == 0 for i in range(len(rows))], tag
    v2 = [p for p in POINTS if p.get("corpus") == "vllm2"]
    v2_fit, v2_held = [p for p in v2 if not p.get("held_out")], [p for p in v2 if p.get("held_out")]
    assert (len(v2_fit), len(v2_held)) == (9, 10)
    assert close(v2_fit) >= 5 and close(v2_held) >= 5


def _arm_counts(fitted):
    """An arm's MLX figures (arm_figures) and, with the arm's MLX line (every other backend keeping its own), each
    corpus's count within 15%."""
    figs = arm_figures(BEFORE_M1, fitted, True)
    arms = arm_backends(BEFORE_M1, fitted, True)
    with lines({"mlx": arms["mlx"][0]}):  # only MLX's line moves in this arm (the others keep theirs)
        counts = {}
        for p in BEFORE_M1:
            counts[p.get("corpus")] = counts.get(p.get("corpus"), 0) + (abs(predict_decode(p) / p["tokens_per_s"] - 1)
                                                                         <= 0.15)
    return figs["backends"]["mlx"], counts


@pytest.mark.usefixtures("bandwidths_before_confirm_m1")
def test_mlx_lm_refit_arm_failed_its_rules():
    """benchmarks/results/mlx-lm-candidates.md, rule 2: the mlx-lm rows in fixture order, the odd ones (1st, 3rd, ...)
    added to MLX's fitted points, the even ones held out; adopted only if (a) MLX's held-out count within 15% rises
    against today's line on the same points, (b) MLX's leave-one-out share does not fall, (c) the first 115 keep >= 94
    within 15%, (d) every other SPEED_FLOORS row holds. Recomputed here: it fails (a), (b) and (c), so BACKENDS["mlx"]
    stays the fit of its 5 points (test_backend_parameters_are_the_fit_of_the_points_not_held_out)."""
    ml = [p for p in POINTS if p.get("corpus") == "mlx-lm"]
    assert len(ml) == 33 and all(p.get("held_out") for p in ml)
    odd = {p["id"] for p in ml[0::2]}
    def today(p):
        return not p.get("held_out")
    def refit(p):
        return today(p) or p["id"] in odd
    with metal_line_before_confirm():  # decided under the Metal line and against the floors of the time
        t_mlx, t_counts = _arm_counts(today)
        r_mlx, r_counts = _arm_counts(refit)
    held = [p for p in BEFORE_M1 if p["backend"] == "mlx" and not p.get("outlier") and not refit(p)]
    today_held = sum(abs(_predicted(p) / p["tokens_per_s"] - 1) <= 0.15 for p in held)
    rules = {"a": r_mlx["held"] > today_held,
             "b": r_mlx["loo"] / r_mlx["fitted_n"] >= t_mlx["loo"] / t_mlx["fitted_n"],
             "c": r_counts[None] >= 94,
             "d": all(r_counts.get(c, 0) >= within for c, _, within, _ in FLOORS_BEFORE_CONFIRM
                      if c not in (None, "mlx-lm"))}
    assert rules == {"a": False, "b": False, "c": False, "d": True}
    assert not all(rules.values()) and speed.BACKENDS["mlx"].fitted_on == t_mlx["fitted_n"] == 5
    # the figures recorded in mlx-lm-candidates.md and speed.py's comment
    assert (len(held), today_held, r_mlx["held"]) == (19, 14, 12)
    assert (t_mlx["loo"], r_mlx["loo"], r_mlx["fitted_n"]) == (5, 13, 22)
    assert (t_counts[None], r_counts[None], t_counts["mlx-lm"], r_counts["mlx-lm"]) == (94, 91, 24, 21)
    assert r_mlx["params"].t0_ms == pytest.approx(11.13, abs=0.01)


@pytest.mark.usefixtures("bandwidths_before_confirm_m1")
def test_vulkan_board_refit_follows_its_preregistered_rule():
    """Rule 4 of vulkan-board-candidates.md, fixed before any prediction: refit Vulkan's line with the 1st, 3rd, ...
    vulkan-board rows (fixture order) fitted, the 2nd, 4th, ... held out; adopt it only if (a) the 115 points without
    a corpus tag keep >= 94 within 15%, (b) Vulkan's held-out points within 15% (earlier held-out + even rows) rise
    against the line before, (c) no corpus count falls and (d) Vulkan's leave-one-out within-15% share over its
    fitted points does not fall. (a), (c) and (d) hold (leave-one-out 2 of 7 -> 7 of 14), (b) does not (9 -> 8 of 14:
    the refit gives the Q4_0 rows a legacy slope of their own, 0.81 of peak, and the held-out RTX 5090 row goes from
    +11% to +17%), so by its own rule it was not adopted. The lead's confirmatory rule then decided this fixed arm
    against the 7-point line on new points (confirm-amd, benchmarks/results/confirm-amd-candidates.md;
    tests/plan/test_confirm_confirm_amd.py): 7 of 8 against 6 of 8 within 15%, so it WAS adopted there: the odd rows
    are fitted and speed.BACKENDS["vulkan"] is this arm. This recomputes the board's own rule on the data it was
    decided on (the confirm-amd rows aside), and checks the adopted line is the arm."""
    board = [p for p in BEFORE_M1 if p.get("corpus") == "vulkan-board"]
    odd = {id(p) for p in board[::2]}
    before = lambda p: today_fitted(p) and id(p) not in odd  # noqa: E731  (the fitted set before the adoption)
    arm = lambda p: before(p) or id(p) in odd  # noqa: E731
    vk = [p for p in BEFORE_M1 if p["backend"] == "vulkan" and not p.get("outlier")]
    held = [p for p in vk if not arm(p) and p.get("corpus") != "confirm-amd"]
    old = [p for p in BEFORE_M1 if not p.get("corpus")]
    corpora = [c for c, *_ in FLOORS_BEFORE_CONFIRM if c != "vulkan-board"]

    def close(ps):
        return sum(abs(predict_decode(p) / p["tokens_per_s"] - 1) <= 0.15 for p in ps)

    def counts(line):
        with lines({"vulkan": line}):
            return close(old), close(held), {c: close([p for p in BEFORE_M1 if p.get("corpus") == c]) for c in corpora}
    old_line = arm_backends(BEFORE_M1, before, True)["vulkan"][0]
    refit = arm_backends(BEFORE_M1, arm, True)["vulkan"][0]
    assert (old_line.efficiency, old_line.t0_ms, old_line.fitted_on) == (pytest.approx(0.751, abs=0.001),
                                                                         pytest.approx(0.575, abs=0.01), 7)
    with metal_line_before_confirm():  # decided under the Metal line of the time
        today, after = counts(old_line), counts(refit)
    loo_today = arm_figures(BEFORE_M1, before, True)["backends"]["vulkan"]
    loo_arm = arm_figures(BEFORE_M1, arm, True)["backends"]["vulkan"]
    assert (len(board), len(held), refit.fitted_on) == (13, 14, 14)
    a = after[0] >= 94
    b = after[1] > today[1]
    c = all(after[2][k] >= today[2][k] for k in corpora)
    d = loo_arm["loo"] / loo_arm["fitted_n"] >= loo_today["loo"] / loo_today["fitted_n"]
    assert (a, b, c, d) == (True, False, True, True), (today, after, loo_today, loo_arm)
    assert (today[1], after[1], loo_today["loo"], loo_arm["loo"]) == (9, 8, 2, 7)
    _assert_adopted(board, "vulkan", refit, 14)


def test_fit_recovers_known_parameters():
    pts = [(b, 100.0, 1 / (b / (0.6 * 100e9) + 0.002)) for b in (1e9, 4e9, 8e9)]
    e, t0, e16 = speed.fit_backend(pts)
    assert e == pytest.approx(0.6, rel=1e-6) and t0 == pytest.approx(2.0, rel=1e-6) and e16 == 0.0


def test_fit_recovers_a_separate_16bit_efficiency():
    """Two quantized and two 16-bit points on one overhead: each kind's slope and the shared t0 come back; with a
    single 16-bit point the fit keeps one efficiency (no slope is one point's exact fit)."""
    def pt(b, e, kind):
        return (b, 100.0, 1 / (b / (e * 100e9) + 0.0005), kind)
    pts = [pt(1e9, 0.6, "quantized"), pt(5e9, 0.6, "quantized"), pt(2e9, 0.85, "16bit"), pt(9e9, 0.85, "16bit")]
    e, t0, e16 = speed.fit_backend(pts)
    assert (e, t0, e16) == (pytest.approx(0.6, rel=1e-6), pytest.approx(0.5, rel=1e-6), pytest.approx(0.85, rel=1e-6))
    assert speed.fit_backend(pts[:3])[2] == 0.0


def test_16bit_weights_plan_at_their_own_efficiency():
    """weight_kind sorts formats; a backend with efficiency_16bit reads 16-bit weights at it (the KV cache at the
    quantized efficiency), one without reads every kind at its one efficiency."""
    assert speed.weight_kind("F16") == speed.weight_kind("bf16") == "16bit"
    assert speed.weight_kind("Q4_K_M") == speed.weight_kind(None) == speed.weight_kind("fp8") == "quantized"
    b = speed.BACKENDS["cuda"]
    assert b.efficiency_16bit > b.efficiency
    t16 = 1 / speed.single_stream_tokens_per_s(2e9, 1e8, 936, "cuda", "16bit")
    bw = b.read_gbs(936) * 1e9
    assert t16 == pytest.approx(2e9 / (b.efficiency_16bit * bw) + 1e8 / (b.efficiency * bw) + b.t0_ms / 1000)
    assert not speed.BACKENDS["vulkan"].efficiency_16bit
    assert (speed.single_stream_tokens_per_s(2e9, 0, 400, "vulkan", "16bit")
            == speed.single_stream_tokens_per_s(2e9, 0, 400, "vulkan"))
    kw = dict(weights_bytes=2e9, kv_bytes_per_stream=1e8, streams=1, gpu_fraction=1.0, gpu_bandwidth_gbs=936,
              host_bandwidth_gbs=60, active_params=1e9, peak_flops=71e12, prompt_tokens=100)
    assert speed.forecast("cuda", weights="16bit", **kw).single_stream_tokens_per_s == pytest.approx(1 / t16, abs=0.06)


def test_aggregate_shares_bandwidth_and_hits_the_compute_knee():
    one = speed.aggregate_tokens_per_s(4e9, 1e7, 1000, "cuda", 1)
    eight = speed.aggregate_tokens_per_s(4e9, 1e7, 1000, "cuda", 8)
    assert 7 * one < eight < 8 * one  # weights read once per step, each stream adds its KV
    capped = speed.aggregate_tokens_per_s(4e9, 1e7, 1000, "cuda", 512, active_params=8e9, peak_tflops=100)
    assert capped == pytest.approx(speed.BACKENDS["cuda"].batch_mfu * 100e12 / (2 * 8e9), rel=0.05)
    assert capped < speed.BACKENDS["cuda"].batch_mfu * 100e12 / (2 * 8e9)  # plus the weights' read, once per step
    assert speed.ttft_seconds(1000, 2000.0) == pytest.approx(0.5)


def _ollama_plan(tmp_path, hardware, users):
    from tools.stacks import plan_for
    return plan_for(tmp_path, f"""
version: 1
hardware: {hardware}
workload: {{concurrent_users: {users}, context_tokens: 8192}}
services:
  chat: {{model: llama-3.1-8b-instruct, engine: ollama, quant: Q4_K_M}}
""")


def test_ollama_plan_offloads_what_ollamas_estimate_places(tmp_path):
    """8 x 8k slots with an f16 cache (flash attention off) on an 8 GB card: Ollama's estimate reserves a 4.4 GiB
    graph (the KQ scores of 512 rows over 65,536 cells) and places 10 layers; the plan, and so num_gpu, follow it."""
    from dataclasses import replace

    from stackgen.engines import ollama_estimate
    from stackgen.engines.ollama import ollama_gpus, ollama_model
    from stackgen.plan.memory import initial_budget
    plan = _ollama_plan(tmp_path, "rtx-4060", 8)
    sp, hw = plan.services[0], plan.hardware
    m = sp.memory
    assert any("Ollama's own estimate" in lever for lever in m.levers)
    assert 0 < m.gpu_layers < m.total_layers
    budget = replace(initial_budget(hw), gpu_bytes=m.gpu_budget_bytes)  # what the planner had for this service
    est = ollama_estimate.estimate(ollama_model(sp.model, m.weights_bytes), ollama_gpus(hw, budget),
                                   num_ctx=m.context_per_request, parallel=m.parallel, kv_type=m.kv_cache_type)
    assert est.graph > 4 * 2**30 and m.gpu_layers == min(est.layers, m.total_layers)


def test_ollama_plan_is_left_alone_when_ollama_places_every_layer(tmp_path):
    m = _ollama_plan(tmp_path / "b", "rtx-4090", 10).services[0].memory
    assert m.gpu_layers == m.total_layers
    assert not any("Ollama's own estimate" in lever for lever in m.levers)


def test_logit_rows_follow_the_llama_cpp_build():
    """Up to build 9272 (llama.cpp issue 23527) the worst-case graph reserves logits for the whole micro-batch;
    with PR 23861 llama-server reserves one row per slot. 8 slots of Llama 3 (vocab 128256) at -ub 512: 512 x
    128256 x 4 B = 250.5 MiB on build 9272, 8 x 128256 x 4 B = 3.9 MiB after (the issue's ~250 MiB). The builds
    between 9272 and 9616 (the first surely after the merge) and an unknown build plan the larger rule."""
    from types import SimpleNamespace

    from stackgen.plan.memory import MIB, llamacpp_compute_bytes, llamacpp_logit_rows
    assert llamacpp_logit_rows(8, 512, build=9272) == 512 == llamacpp_logit_rows(8, 512, build=9273)
    assert llamacpp_logit_rows(8, 512, build=None) == 512
    assert llamacpp_logit_rows(8, 512, build=9616) == 8 == llamacpp_logit_rows(8, 512)
    assert llamacpp_logit_rows(1024, 512) == 512  # never more rows than a micro-batch holds
    llama3 = SimpleNamespace(hidden=4096, ffn=14336, vocab=128256)
    grow = llamacpp_compute_bytes(llama3, 8, 512, build=9272) - llamacpp_compute_bytes(llama3, 8, 512)
    assert grow / MIB == pytest.approx((512 - 8) * 128256 * 4 / MIB)


CONCURRENCY = yaml.safe_load((FIX / "vllm_concurrency.yaml").read_text())["points"]


@pytest.mark.parametrize("point", CONCURRENCY, ids=[p["id"] for p in CONCURRENCY])
def test_vllm_aggregate_at_concurrency_within_25_percent(point):
    """stackgen's aggregate decode prediction at the logged concurrency (> 1) against the public figure: 0.75..1.25.
    A point outside it carries known_miss (the reason, with the ratio in benchmarks/results/public_logs.md)."""
    from public_logs import predict_vllm_concurrency_point
    assert point["source"].startswith("https://github.com/") and point["quote"].strip()
    assert point["streams"] > 1
    ratio = predict_vllm_concurrency_point(point)["ratio"]
    if point.get("known_miss"):
        pytest.xfail(f"predicted/measured {ratio:.2f}: {point['known_miss']}")
    assert 0.75 <= ratio <= 1.25, ratio


def test_vllm_concurrency_known_misses_still_miss():
    from public_logs import predict_vllm_concurrency_point
    assert len(CONCURRENCY) >= 3
    for p in CONCURRENCY:
        if p.get("known_miss"):
            assert not 0.75 <= predict_vllm_concurrency_point(p)["ratio"] <= 1.25, p["id"]


def test_vllm_concurrency_scales_with_streams_below_the_knee():
    """The 4090 point: 4 streams of a 4 GB model predict ~3.8x one stream (weights read once per step, each stream
    adds its KV), as the sweep measured 137 -> 520 (3.8x)."""
    from public_logs import predict_vllm_concurrency_point
    p = next(p for p in CONCURRENCY if p["id"].startswith("club3090-697"))
    r = predict_vllm_concurrency_point(p)
    assert r["aggregate"] / r["single"] == pytest.approx(520 / 137, rel=0.05)


# ---- prefill (TTFT): tests/fixtures/public-logs/prefill_speed.yaml ----
# What the corpus supports: 21 of the 28 llama.cpp/MLX points (outliers aside) within 30%, 3 of vLLM's 6.
PREFILL_TOLERANCE = 0.30


def _prefill_ratio(p):
    return predict_prefill(p) / p["tokens_per_s"]


@pytest.mark.parametrize("point", PREFILL, ids=[p["id"] for p in PREFILL])
def test_prefill_point_is_sourced_and_within_tolerance(point):
    assert point["source"].startswith("https://github.com/") and point["quote"].strip()
    assert point["params_b"] > 0 and (point.get("threads") if point["backend"] == "cpu" else point["peak_tflops"])
    ratio = _prefill_ratio(point)
    if point.get("outlier") or point.get("known_miss"):
        pytest.xfail(f"ratio {ratio:.2f}: " + (point.get("outlier") or point["known_miss"]))
    assert abs(ratio - 1) <= PREFILL_TOLERANCE, ratio


def test_prefill_known_misses_are_still_misses():
    """A prefill point recorded as a miss must still miss, and say by how much (its ratio, two decimals)."""
    for p in PREFILL:
        if p.get("known_miss"):
            r = _prefill_ratio(p)
            assert abs(r - 1) > PREFILL_TOLERANCE, p["id"]
            assert f"{r:.2f}" in p["known_miss"], (p["id"], r)


@pytest.mark.parametrize("backend", sorted({p["backend"] for p in PREFILL} & set(speed.BACKENDS)))
def test_prefill_mfu_is_the_fit_of_the_points_not_held_out(backend):
    sel = [prefill_inputs(p) for p in PREFILL
           if p["backend"] == backend and not p.get("outlier") and not p.get("held_out")]
    if backend in BORROWED:  # no fitted point: the lender's MFU, its own points only check it
        assert not sel and speed.BACKENDS[backend].prefill_mfu == speed.BACKENDS[BORROWED[backend]].prefill_mfu
        return
    assert sel
    assert speed.BACKENDS[backend].prefill_mfu == pytest.approx(speed.fit_prefill_mfu(sel), abs=0.001)


@pytest.mark.parametrize("backend", sorted({p["backend"] for p in PREFILL} & set(speed.BACKENDS)))
def test_prefill_check_states_the_points_and_their_largest_error(backend):
    """speed.PREFILL_CHECK: the points checking each backend (outliers aside) and their largest error, rounded up
    to 5% -- what the plan text prints."""
    pts = [p for p in PREFILL if p["backend"] == backend and not p.get("outlier")]
    worst = max(abs(_prefill_ratio(p) - 1) for p in pts)
    n, err = speed.PREFILL_CHECK[backend]
    assert n == len(pts) and err - 0.05 < worst <= err + 1e-9, (worst, err)


def test_prefill_corpus_and_share_within_tolerance():
    """>= 12 points, >= 3 held out, every backend issue 13 names; the llama.cpp and MLX backends: 21 of 28 (outliers
    aside) within 30%; vLLM's TTFT points (added later, their own floor): 3 of 6; SGLang's at vLLM's MFU (corpus2, held
    out): 1 of 2 -- the floors keep each from getting worse."""
    assert len(PREFILL) >= 12 and sum(1 for p in PREFILL if p.get("held_out")) >= 3
    assert {"cuda", "metal", "vulkan", "cpu", "mlx", "rocm", "vllm"} <= {p["backend"] for p in PREFILL}
    for backends, floor, share in ((lambda b: b not in ("vllm", "sglang"), 21, 0.75), (lambda b: b == "vllm", 3, 0.5),
                                   (lambda b: b == "sglang", 1, 0.5)):
        checked = [p for p in PREFILL if not p.get("outlier") and backends(p["backend"])]
        close = [p for p in checked if abs(_prefill_ratio(p) - 1) <= PREFILL_TOLERANCE]
        assert len(close) >= floor and len(close) / len(checked) >= share, (len(close), len(checked))


def test_prefill_fit_recovers_a_known_mfu():
    pts = [(p, 100e12, 0.42 * 100e12 / (2 * p)) for p in (1e9, 8e9, 70e9)]
    assert speed.fit_prefill_mfu(pts) == pytest.approx(0.42, rel=1e-9)


def test_gpu_table_carries_the_fixture_peaks_of_profiled_gpus():
    """A GPU both in profiles/hardware.yaml's table and in the prefill corpus is planned with the peak the corpus
    compares against (within 1%: the table rounds the 4090's 165.2 to 165)."""
    from stackgen.plan.capacity import gpu_peak_flops
    for name, fixture_gpu in (("GeForce RTX 4090", "RTX 4090"), ("Radeon RX 7900 XTX", "RX 7900 XTX"),
                              ("Apple M4", "M4 (10-core GPU)"), ("Apple M4 Max (40-core GPU)", "M4 Max (40-core GPU assumed)"),
                              ("Apple M2 Ultra", "M2 Ultra (76-core GPU)")):
        peak = next(p["peak_tflops"] for p in PREFILL if p["gpu"] == fixture_gpu)
        assert gpu_peak_flops(name, 1.0) / 1e12 == pytest.approx(peak, rel=0.01), name


def test_profiled_gpus_all_have_a_peak_flop_figure():
    """Every GPU of profiles/hardware.yaml has a datasheet (or derived, commented) peak, not the bandwidth x 150
    fallback."""
    from stackgen.plan.capacity import GPU_FLOP_PER_BYTE, gpu_peak_flops
    hw = yaml.safe_load((Path(__file__).parents[2] / "profiles" / "hardware.yaml").read_text())
    gpus = {(g["name"], g["bandwidth_gbs"]) for prof in hw.values() if isinstance(prof, dict)
            for g in prof.get("gpus", []) or []}
    assert gpus
    for name, bw in gpus:
        assert gpu_peak_flops(name, bw) != bw * 1e9 * GPU_FLOP_PER_BYTE, name


# ---- partial offload (layers split between a GPU and system RAM): tests/fixtures/public-logs/partial_offload.yaml --
# Every point is held out. Tolerance: the single-stream decode check's 25% (issue 13), the same speed model and the
# same backends' fits; what the points show (benchmarks/results/public_logs.md): 5 of 6 within 15% and 25% (the step
# reads memory.py's bytes less the token embedding: speed.partial_offload_read), all 6 within the 35% the plan states
# for them (Forecast.error).
PARTIAL = yaml.safe_load((FIX / "partial_offload.yaml").read_text())
PARTIAL_TOLERANCE = 0.25


def _partial_ratio(p):
    from public_logs import predict_partial_offload
    return predict_partial_offload(PARTIAL, p) / p["tokens_per_s"]


@pytest.mark.parametrize("point", PARTIAL["points"], ids=[p["id"] for p in PARTIAL["points"]])
def test_partial_offload_point_is_sourced_and_within_25_percent(point):
    """speed.forecast with memory.py's GPU byte share against a public llama.cpp decode figure at -ngl N < layers.
    A point outside 25% carries known_miss (its ratio and why) and is recorded as xfail."""
    from public_logs import partial_offload_inputs
    host = PARTIAL["hosts"][point["host"]]
    assert point["source"].startswith("https://github.com/") and host["source"].startswith("https://github.com/")
    assert host["ram_bandwidth_gbs"] > 0 and host["ram"].strip() and host["cpu"].strip()
    i = partial_offload_inputs(PARTIAL, point)
    assert 0 < point["ngl"] < i["model"].layers and 0 < i["gpu_fraction"] < 1  # a partial offload
    ratio = _partial_ratio(point)
    if point.get("known_miss"):
        pytest.xfail(point["known_miss"])  # states its ratio (checked below)
    assert abs(ratio - 1) <= PARTIAL_TOLERANCE, ratio


def test_partial_offload_known_misses_still_miss_with_their_stated_ratio():
    """A recorded miss must still miss, at the ratio its note states (else the note is stale)."""
    misses = [p for p in PARTIAL["points"] if p.get("known_miss")]
    assert misses
    for p in misses:
        r = _partial_ratio(p)
        assert abs(r - 1) > PARTIAL_TOLERANCE, p["id"]
        assert f"{r:.2f}" in p["known_miss"], (p["id"], r)


def test_partial_offload_within_the_error_the_plan_states():
    """The plan prints a partial offload's decode with +-Forecast.error (the larger of the GPU and CPU backends'
    stated errors, 35% here): every public point must fall inside what the plan claims."""
    from public_logs import partial_offload_stated_error
    for p in PARTIAL["points"]:
        assert abs(_partial_ratio(p) - 1) <= partial_offload_stated_error(PARTIAL, p), p["id"]


def test_partial_offload_error_is_the_largest_of_its_points():
    """speed.PARTIAL_OFFLOAD_ERROR is what the split's public points show: each within it, and not padded past the
    worst by more than 5 points (as Backend.error for whole-GPU runs)."""
    worst = max(abs(_partial_ratio(p) - 1) for p in PARTIAL["points"])
    assert worst <= speed.PARTIAL_OFFLOAD_ERROR <= worst + 0.05


def test_partial_offload_corpus_and_share_within_tolerance():
    """The corpus: 6+ held-out points from 2+ sources, none fitted; the share within 25% may not fall below what it
    is (5 of 6; benchmarks/results/public_logs.md)."""
    pts = PARTIAL["points"]
    assert len(pts) >= 6 and len({PARTIAL["hosts"][p["host"]]["source"] for p in pts}) >= 2
    assert not any(p.get("held_out") is False for p in pts)
    assert sum(abs(_partial_ratio(p) - 1) <= PARTIAL_TOLERANCE for p in pts) >= 5


def test_partial_offload_layer_bytes_match_the_measured_vram_per_layer():
    """memory.py's per-layer bytes (the rule gpu_fraction comes from) against the same run's VRAM: the InventiveHQ
    sweep's nvidia-smi delta grows ~170 MiB per -ngl step; less the f16 KV one layer holds at -c 4096 it must be
    LayerSplit.per_layer within 10% (nvidia-smi's delta also moves with compute buffers and allocation granularity,
    and Q4_K_M gives some layers' tensors Q6_K)."""
    from public_logs import partial_offload_inputs
    from stackgen.plan.memory import MIB, llamacpp_kv_bytes
    pts = sorted((p for p in PARTIAL["points"] if p.get("vram_mib")), key=lambda p: p["ngl"])
    assert len(pts) >= 3
    i = partial_offload_inputs(PARTIAL, pts[0])
    model = i["model"]
    kv_per_layer = llamacpp_kv_bytes(model, 4096, 1, "f16") / model.layers
    slope = (pts[-1]["vram_mib"] - pts[0]["vram_mib"]) * MIB / (pts[-1]["ngl"] - pts[0]["ngl"])
    assert (slope - kv_per_layer) / i["split"].per_layer == pytest.approx(1.0, abs=0.10)


# ---- partial offload, prompt processing (partial_offload.yaml prefill_points): speed.forecast's prefill rate for the
# prompt, its compute on the GPU plus the RAM layers copied over the host link once per micro-batch. Held out; the
# one public source (a WSL host) is over-predicted 3.9-7.3x by the copies (prefill_hosts' why).
def _pp_ratio(p):
    from public_logs import predict_partial_prefill
    return predict_partial_prefill(PARTIAL, p) / p["tokens_per_s"]


@pytest.mark.parametrize("point", PARTIAL["prefill_points"], ids=[p["id"] for p in PARTIAL["prefill_points"]])
def test_partial_prefill_point_is_sourced_and_within_25_percent(point):
    from public_logs import partial_prefill_inputs
    assert point["source"].startswith("https://github.com/")
    i = partial_prefill_inputs(PARTIAL, point)
    assert 0 < point["ngl"] < i["model"].layers and point["prompt"] >= 32  # a partial offload the GPU runs
    ratio = _pp_ratio(point)
    if point.get("known_miss"):
        pytest.xfail(point["known_miss"])
    assert abs(ratio - 1) <= PARTIAL_TOLERANCE, ratio


def test_partial_prefill_known_misses_still_miss_with_their_stated_ratio():
    misses = [p for p in PARTIAL["prefill_points"] if p.get("known_miss")]
    for p in misses:
        r = _pp_ratio(p)
        assert abs(r - 1) > PARTIAL_TOLERANCE and f"{r:.2f}" in p["known_miss"], (p["id"], r)


def test_partial_prefill_compute_side_matches_the_rows_intercept():
    """The rows' seconds per token are linear in the RAM side's bytes (the copies); at no RAM bytes the line gives the
    compute alone, which must be stackgen's CUDA prefill rate (predict_partial_prefill without copies) within 25%,
    and the slope gives the link rate the prefill_hosts note states (1.54 GB/s)."""
    from public_logs import partial_prefill_inputs, predict_partial_prefill
    pts = PARTIAL["prefill_points"]
    xs = [partial_prefill_inputs(PARTIAL, p)["ram_bytes"] for p in pts]
    ys = [1 / p["tokens_per_s"] for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    compute_rate = 1 / (my - slope * mx)
    assert predict_partial_prefill(PARTIAL, pts[0], copies=False) / compute_rate == pytest.approx(1.0, abs=0.25)
    link = 1 / (slope * pts[0]["ubatch"]) / 1e9
    assert f"{link:.2f} GB/s" in PARTIAL["prefill_hosts"][pts[0]["host"]]["why"], link


def test_no_point_has_a_stray_key():
    """A flow-mapping value with a comma and no quotes (`gpu: M1 Max (32-core GPU, 64 GB)`) splits into a cut value
    and a key '64 GB)' with no value: every key of a point has a value."""
    stray = [(p["id"], k) for p in POINTS for k, v in p.items() if v is None]
    assert stray == []


def test_every_confirm_corpus_belongs_to_a_decision_of_its_time():
    """Every confirmatory corpus in decode_speed.yaml is one a decision in public_logs.DECISION_ERAS collected, so the
    earlier decisions' tests leave it out (points_of_its_time) and a new one cannot slip into their recorded counts;
    a decision's points hold its own corpora and not a later one's."""
    from public_logs import DECISION_CORPORA, DECISION_ERAS
    known = {c for era in DECISION_ERAS for d in era for c in DECISION_CORPORA.get(d, (d,))}
    tags = {p["corpus"] for p in POINTS if str(p.get("corpus", "")).startswith("confirm-")}
    assert tags <= known, sorted(tags - known)
    tier = {p.get("corpus") for p in points_of_its_time(POINTS, "confirm-tier")}
    assert {"confirm-tier-b", "confirm-graphs"} <= tier and not tier & {"confirm-m1-metal", "confirm-m1-mlx"}
    assert {p.get("corpus") for p in points_of_its_time(POINTS, "confirm-graphs")} >= {"confirm-graphs"}
