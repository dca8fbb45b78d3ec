"""The per-user rate under sustained load (speed.StepParts.sustained_step_s, Forecast.sustained_per_user_tokens_per_s):
the plan's forecast of a closed loop, where each user sends its next request as soon as the last is answered so the
decode steps also carry other users' prompts, against the fleet simulator (capacity.simulate_service, what
`stackgen simulate` and the plan's capacity prediction run) stepping the same StepParts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stackgen.host.facts import HostFacts
from stackgen.plan import speed
from stackgen.plan.capacity import simulate_service
from stackgen.plan.resolve import resolve
from stackgen.plan.simulate import Variability
from stackgen.spec.stack import load_stack

GOLDEN = Path(__file__).parent.parent / "golden"

# --- the step, by hand ---------------------------------------------------------------------------------------------

P = speed.StepParts(weights_s=0.010, kv_s=0.001, t0_s=0.002, prompt_token_s=1e-4, batch_token_s=5e-4)


def test_one_stream_decodes_as_alone_its_own_prompt_before_its_first_token():
    assert P.sustained_step_s(1, 1000, 300) == P.step_s(1)
    # no output length or no prompt: nothing arrives between the tokens
    assert P.sustained_step_s(8, 1000, 0) == P.sustained_step_s(8, 0, 300) == P.step_s(8)


def test_a_whole_number_of_prompts_per_step_is_that_step():
    """601 streams, 300 output tokens: the 600 others each prefill in 1 of every 300 steps, 2 prompts in every step,
    their 2 streams not decoding: step(599, 2 x 1000)."""
    assert P.sustained_step_s(601, 1000, 300) == pytest.approx(P.step_s(599, 2000))


def test_a_fraction_of_a_prompt_per_step_mixes_the_two_whole_steps():
    """8 streams, 300 output tokens: k = 7/300 of another's prompt per step, so 7 in 300 steps carry one (1000
    prompt tokens, 7 decoding) and the rest decode all 8; for an additive step that is the step at k prompts spread."""
    k = 7 / 300
    want = (1 - k) * P.step_s(8) + k * P.step_s(7, 1000)
    assert P.sustained_step_s(8, 1000, 300) == pytest.approx(want)
    by_hand = 0.002 + 0.010 + (8 - k) * 0.001 + (7 - k) * 5e-4 + k * 1000 * 1e-4
    assert P.sustained_step_s(8, 1000, 300) == pytest.approx(by_hand)
    assert P.sustained_step_s(8, 1000, 300) > P.step_s(8)


def test_a_partial_offloads_prompt_lands_whole_and_copies_its_layers():
    """A non-linear step: a prompt of >= OP_OFFLOAD_MIN_BATCH tokens copies the RAM layers per micro-batch. 4
    streams bring 3/300 of a prompt per step, under 32 tokens if spread thin (no copy); the simulator prefills each
    whole, so the mix charges the copies (2 micro-batches of 512 for 1000 tokens)."""
    p = dataclasses.replace(P, ram_weights_s=0.004, ubatch_copy_s=0.02, ubatch=512)
    k = 3 / 300
    assert p.sustained_step_s(4, 1000, 300) == pytest.approx((1 - k) * p.step_s(4) + k * p.step_s(3, 1000))
    assert p.step_s(3, 1000) - P.step_s(3, 1000) == pytest.approx(2 * 0.02 - 0.004)
    assert p.sustained_step_s(4, 1000, 300) > p.step_s(4 - k, round(k * 1000)) + k * 0.03


def test_forecast_carries_it_rounded_and_json_and_text_say_it():
    kw = dict(weights_bytes=4e9, kv_bytes_per_stream=1e7, gpu_fraction=1.0, gpu_bandwidth_gbs=1000,
              host_bandwidth_gbs=50, active_params=8e9, peak_flops=100e12, prompt_tokens=1000)
    f = speed.forecast("vllm", streams=8, output_tokens=300, **kw)
    b = speed.BACKENDS["vllm"]
    parts = speed.step_parts(b, speed.BACKENDS["cpu"], **{k: v for k, v in kw.items() if k != "prompt_tokens"})
    assert f.sustained_per_user_tokens_per_s == round(1 / parts.sustained_step_s(8, 1000, 300), 1)
    assert f.sustained_per_user_tokens_per_s < f.per_user_tokens_per_s
    assert f.to_json()["sustained_per_user_tokens_per_s"] == f.sustained_per_user_tokens_per_s
    assert (f"tokens/s per user at 8 streams ({f.aggregate_tokens_per_s:g} aggregate, memory bandwidth-bound), "
            f"{f.sustained_per_user_tokens_per_s:g} per user under sustained load (other users' prompts sharing "
            "the steps), TTFT") in f.text()
    # unknown output length: unknown (0), and the text says nothing of it
    g = speed.forecast("vllm", streams=8, **kw)
    assert g.sustained_per_user_tokens_per_s == 0.0 and "sustained" not in g.text()
    # one stream: the same figure, said once
    one = speed.forecast("vllm", streams=1, output_tokens=300, **kw)
    assert one.sustained_per_user_tokens_per_s == one.per_user_tokens_per_s and "sustained" not in one.text()


# --- against the simulator, on planned services ---------------------------------------------------------------------

PLANS = {
    "vllm-dp": ("fleet-vllm-dp-h100", "chat"),  # 2000 users, vLLM data parallel 3 x TP2: 667 streams per core
    "llamacpp-fleet": ("fleet-llamacpp-4090", "chat"),  # 32 users on 4 separate llama.cpp instances, 8 each
    "vllm-one-instance": ("vllm-team-api", "chat"),  # one vLLM TP4 instance, 8 users, 1500 in / 400 out
    "sglang-one-instance": ("sglang-agents-h100", "agents"),  # one SGLang instance, 32 users, 8000-token prompts
    "cpu": ("cpu-llamacpp", "assistant"),  # llama.cpp on a CPU (the tiled step), 4 users
}


@pytest.fixture(scope="module", params=sorted(PLANS))
def planned(request):
    case, name = PLANS[request.param]
    plan = resolve(load_stack(GOLDEN / case / "stack.yaml"), HostFacts.load(GOLDEN / case / "host.json"))
    sp = next(s for s in plan.services if s.name == name)
    return request.param, sp, plan.hardware


def _error(forecast: float, simulated: float) -> float:
    return abs(forecast / simulated - 1)


def test_sustained_agrees_with_the_simulator_with_lengths_spread(planned):
    """`stackgen simulate --length-spread 0.3` (prompt and output lengths around the workload's with a CV of 0.3; no
    step-time jitter) at the plan's own users: the median request's decode rate is the sustained figure within 10%,
    and the figure of the streams decoding together with no prompt arriving (per_user_tokens_per_s) is not.

    The spread keeps the deterministic loop from locking users into groups that prefill in one step (below). The
    model leaves out the gap between a request's last token and the next one's prefill (the request overhead and
    the rest of the step in progress) and the step-token budget; the rest is the median over a few hundred requests
    in which the number of other prompts landing in a request's decode steps varies (mean (streams - 1) x
    (output - 1) / output: ~3 with 4 users). Measured (seed 0): -0.6% to -4.1% on the plans here; the per-user
    figure +18.8% to +114%, so 10% tells the two apart."""
    name, sp, hw = planned
    fc = sp.speed
    sim = simulate_service(sp, hw, [sp.workload.concurrent_users],
                           variability=Variability(prompt_cv=0.3, output_cv=0.3))[0].tokens_per_s_per_user
    assert _error(fc.sustained_per_user_tokens_per_s, sim) <= 0.10, (name, fc.sustained_per_user_tokens_per_s, sim)
    assert _error(fc.per_user_tokens_per_s, sim) > 0.10, (name, fc.per_user_tokens_per_s, sim)


@pytest.mark.parametrize("which", ["vllm-dp", "llamacpp-fleet", "vllm-one-instance", "sglang-one-instance"])
def test_sustained_agrees_with_the_plans_own_prediction(which):
    """No variability at all (the prediction `plan` prints beside the forecast): within 15%, the project's accuracy
    aim. Not on the CPU plan: with every request alike, the loop locks its 4 users into a group of 2 that send,
    prefill and finish together, each prefilling before its own first token, so no other prompt lands in their
    decode steps; the median request is theirs (5.04 tokens/s there) and only the first-arriving user sees every
    other prompt (3.23, the sustained figure's 3.2). A spread of lengths (the test above) breaks the groups. The
    same locking makes this check weak for few users: the llama.cpp fleet's 8 and vllm-team-api's 8 per instance
    (sustained -7.3% and -12.4% off; the per-user figure +11.7% and +6.2%); with 667 per instance (vllm-dp) and 8000-
    token prompts (sglang) it tells them apart (-1.5% against +76%, -0.9% against +114%)."""
    case, name = PLANS[which]
    plan = resolve(load_stack(GOLDEN / case / "stack.yaml"), HostFacts.load(GOLDEN / case / "host.json"))
    sp = next(s for s in plan.services if s.name == name)
    sim = simulate_service(sp, plan.hardware, [sp.workload.concurrent_users])[0].tokens_per_s_per_user
    assert _error(sp.speed.sustained_per_user_tokens_per_s, sim) <= 0.15, (which, sp.speed, sim)
    if sp.capacity is not None:  # the figure `plan` prints: one instance with its share of the users, simulated
        said = sp.capacity.prediction.tokens_per_s_per_user
        assert _error(sp.speed.sustained_per_user_tokens_per_s, said) <= 0.15, (which, sp.speed, said)


def test_a_fleets_figure_is_one_instances(planned):
    """fleet_forecast: the busiest instance's users through service_forecast, as the other per-user figures."""
    from stackgen.plan.capacity import instance_of

    name, sp, hw = planned
    inst = instance_of(sp, hw)
    users = -(-sp.workload.concurrent_users // inst.count)
    wl, mem = sp.workload, inst.memory
    one = speed.service_forecast(sp.engine, sp.model, mem, inst.hardware, users=users,
                                 prompt_tokens=wl.prompt_tokens, threads=inst.threads, calibration=sp.calibration,
                                 output_tokens=wl.output_tokens, build=getattr(sp, "engine_build", None),
                                 avg_context=min(mem.context_per_request, wl.prompt_tokens + wl.output_tokens // 2))
    assert sp.speed.sustained_per_user_tokens_per_s == one.sustained_per_user_tokens_per_s > 0
    assert sp.speed.instances == inst.count
