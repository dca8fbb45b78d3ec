"""The capacity plan (stackgen/plan/capacity.py), the simulator (stackgen/plan/simulate.py), the HAProxy config and
`stackgen simulate`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from stackgen.render.balancer import haproxy_config
from stackgen.plan.capacity import ServiceCurve
from stackgen.cli import app
from stackgen.errors import PlanError
from stackgen.render.artifact import RenderContext, render_plan
from stackgen.plan.simulate import Variability, simulate
from tools.stacks import plan_for

TEAM_8X_H100 = """
version: 1
hardware: 8x h100-80gb
workload: {{concurrent_users: {users}, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}}
services:
  chat: {{model: llama-3.1-8b-instruct}}
"""

CPU_REPLICAS = """
version: 1
hardware: cpu-server-64gb
workload: {{concurrent_users: 4, context_tokens: 1024, prompt_tokens: 128, output_tokens: 64}}
services:
  chat: {{model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M, replicas: {replicas}}}
"""


def curve(step=0.04, kv=0.0, flop=0.002, batch=4, tokens=2048, overhead=0.0) -> ServiceCurve:
    return ServiceCurve(step, kv, flop, max_batch=batch, step_tokens=tokens, overhead_s=overhead)


# ---------------------------------------------------------------------------------------------- simulator


def test_one_user_matches_the_curve_by_hand():
    # 100 prompt tokens at 2 ms each = 0.2 s to the first token; then 0.04 s per token.
    r = simulate([curve()], users=1, prompt_tokens=100, output_tokens=11, rounds=3)
    assert r.ttft_p50_s == pytest.approx(0.2)
    assert r.tokens_per_s_per_user == pytest.approx(25.0)
    assert r.requests == 2  # the first round is a warm-up


def test_users_beyond_the_batch_queue_and_ttft_grows():
    one = simulate([curve(batch=2)], users=2, prompt_tokens=100, output_tokens=50)
    four = simulate([curve(batch=2)], users=4, prompt_tokens=100, output_tokens=50)
    assert one.queued_share == 0
    assert four.queued_share > 0
    assert four.ttft_p95_s > 2 * one.ttft_p95_s


def test_a_second_instance_halves_the_queue():
    one = simulate([curve(batch=2)], users=4, prompt_tokens=100, output_tokens=50)
    two = simulate([curve(batch=2)] * 2, users=4, prompt_tokens=100, output_tokens=50)
    assert two.ttft_p95_s < one.ttft_p95_s / 1.5
    assert two.throughput_tokens_per_s > 1.5 * one.throughput_tokens_per_s


def test_think_time_lowers_utilization():
    busy = simulate([curve()], users=4, prompt_tokens=100, output_tokens=20)
    idle = simulate([curve()], users=4, prompt_tokens=100, output_tokens=20, think_time_s=20.0, rounds=6)
    assert idle.utilization < busy.utilization / 2


def test_batching_shares_the_weight_read():
    # Memory-bound steps: 4 streams decode at nearly the single-stream rate each.
    r1 = simulate([curve()], users=1, prompt_tokens=10, output_tokens=200)
    r4 = simulate([curve()], users=4, prompt_tokens=10, output_tokens=200)
    assert r4.throughput_tokens_per_s > 3 * r1.throughput_tokens_per_s


def test_cpu_decode_pays_a_pass_per_stream_past_whole_tiles_and_gpu_decode_shares_the_read(tmp_path):
    from stackgen.plan.capacity import fleet_curves

    cpu = plan_for(tmp_path / "c", CPU_REPLICAS.format(replicas=2))
    c = fleet_curves(cpu.services[0], cpu.hardware)[0]
    assert c.step is not None and c.decode_tile == 4
    assert c.step_s(2, 0) >= 1.5 * c.step_s(1, 0)  # 2 streams are 2 passes of a stream alone (no whole tile)
    gpu = plan_for(tmp_path / "g", TEAM_8X_H100.format(users=8))
    g = fleet_curves(gpu.services[0], gpu.hardware)[0]
    assert g.decode_tile == 0 and g.step_s(2, 0) < 1.1 * g.step_s(1, 0)
    # In the simulator: 2 streams on one CPU instance each decode well below the single-stream rate.
    one = simulate([c], users=1, prompt_tokens=16, output_tokens=64)
    two = simulate([c], users=2, prompt_tokens=16, output_tokens=64)
    assert two.tokens_per_s_per_user < 0.7 * one.tokens_per_s_per_user


def test_requests_sent_together_do_not_stay_in_lockstep():
    # Two users on one 2-slot instance, equal lengths: the engine starts a prompt step on the first arrival and
    # takes the second at its next step, so the two drift apart and most prompts run beside the other's decode
    # (about one prefill, 0.2 s, plus the wait for a step boundary) instead of both prompts together in every
    # round (0.4 s each, what the simulator predicted before).
    r = simulate([curve(batch=2)], users=2, prompt_tokens=100, output_tokens=50, rounds=10)
    assert r.ttft_p50_s < 0.35 and r.ttft_p50_s < r.ttft_p95_s


def test_without_variability_every_request_alike_p95_is_p50():
    r = simulate([curve()] * 2, users=2, prompt_tokens=100, output_tokens=20, rounds=20)
    assert r.ttft_p95_s == pytest.approx(r.ttft_p50_s)


def test_prefill_jitter_spreads_ttft_by_its_cv_and_keeps_the_mean():
    # One user per instance, no queueing: TTFT is one prefill step (0.2 s) times the jitter factor (mean 1).
    v = Variability(prefill_cv=0.2)
    r = simulate([curve()] * 2, users=2, prompt_tokens=100, output_tokens=20, rounds=300, variability=v)
    assert r.ttft_p95_s > 1.2 * r.ttft_p50_s  # lognormal, cv 0.2: p95 ~ 1.37 x p50
    assert r.ttft_p95_s < 1.6 * r.ttft_p50_s
    assert r.ttft_p50_s == pytest.approx(0.2, rel=0.05)
    assert r.tokens_per_s_per_user == pytest.approx(25.0)  # decode untouched


def test_decode_jitter_and_length_spread_keep_mean_throughput():
    flat = simulate([curve()], users=2, prompt_tokens=100, output_tokens=50, rounds=200)
    v = Variability(prompt_cv=0.3, output_cv=0.3, decode_cv=0.2)
    noisy = simulate([curve()], users=2, prompt_tokens=100, output_tokens=50, rounds=200, variability=v)
    assert noisy.throughput_tokens_per_s == pytest.approx(flat.throughput_tokens_per_s, rel=0.1)
    assert noisy.ttft_p95_s > 1.2 * noisy.ttft_p50_s  # the prompts' lengths differ


def test_variability_is_seeded_and_checked():
    v = Variability(prefill_cv=0.3, decode_cv=0.3)
    a = simulate([curve()], users=3, prompt_tokens=100, output_tokens=20, rounds=30, variability=v, seed=7)
    b = simulate([curve()], users=3, prompt_tokens=100, output_tokens=20, rounds=30, variability=v, seed=7)
    assert a == b
    with pytest.raises(ValueError, match="prefill_cv"):
        Variability(prefill_cv=-0.1)


# ---------------------------------------------------------------------------------------------- capacity plan


def test_team_scale_gets_data_parallel_with_predictions(tmp_path):
    sp = plan_for(tmp_path, TEAM_8X_H100.format(users=2000)).services[0]
    out = sp.to_json()
    cap = out["capacity"]
    assert out["replicas"] > 1 and cap["meets_targets"]
    assert "--data-parallel-size" in sp.command
    assert sp.command[sp.command.index("--data-parallel-size") + 1] == str(out["replicas"])
    assert cap["predicted"]["ttft_p95_s"] <= 2.0 and cap["predicted"]["tokens_per_s_per_user"] >= 10
    # One instance cannot: it is rejected with its numbers.
    assert cap["rejected_layouts"]["1 x TP1"].startswith("misses the targets: p95 TTFT")
    assert any(r.startswith("replicas: ") for r in out["reasons"])


def test_small_team_keeps_one_instance(tmp_path):
    sp = plan_for(tmp_path, TEAM_8X_H100.format(users=8)).services[0]
    assert sp.replicas == 1 and "--data-parallel-size" not in sp.command
    assert "uses" in sp.capacity.rejected["2 x TP1"]  # meets too, but with more GPUs


def test_stricter_target_needs_more_gpus(tmp_path):
    loose = plan_for(tmp_path / "a", TEAM_8X_H100.format(users=2000)).services[0]
    # A p95 TTFT target 15% under what the loose plan's fleet predicts (its GPUs no longer meet it). Not a fixed
    # 600 ms: vLLM's prefill on the shared speed model (speed.py's default 0.35 MFU, additive to the step's weight
    # read; the curve's old constant was 0.5 in a max) puts 2000 users' p95 on 8 H100s past 0.8 s.
    target = int(loose.capacity.prediction.ttft_p95_s * 1000 * 0.85)
    strict = plan_for(tmp_path / "b", TEAM_8X_H100.format(users=2000).replace(
        "output_tokens: 300}", f"output_tokens: 300, ttft_p95_ms: {target}}}")).services[0]
    assert strict.capacity.meets and loose.capacity.meets
    assert strict.capacity.layout.gpus > loose.capacity.layout.gpus


def test_unmeetable_target_says_by_how_much_and_what_would(tmp_path):
    sp = plan_for(tmp_path, TEAM_8X_H100.format(users=4000).replace(
        "output_tokens: 300}", "output_tokens: 300, tokens_per_s_per_user: 40}")).services[0]
    cap = sp.capacity
    assert not cap.meets
    assert "misses the targets" in cap.advice[0] and "tokens/s per user < target 40" in cap.advice[0]
    assert any("H100" in a and "more GPUs" in a for a in cap.advice) or any("no number" in a for a in cap.advice)


def test_pinned_replicas_are_separate_instances_on_their_own_ports(tmp_path):
    sp = plan_for(tmp_path, CPU_REPLICAS.format(replicas=2)).services[0]
    cap = sp.capacity
    assert cap.separate and cap.replicas == 2 and cap.pinned
    assert len(set(cap.ports)) == 2 and sp.port not in cap.ports
    assert sp.command[sp.command.index("-np") + 1] == "2"  # 4 users over 2 instances
    paths = {a.path for a in render_plan(plan_for(tmp_path / "r", CPU_REPLICAS.format(replicas=2)),
                                         RenderContext("stack.yaml"), ["script"])}
    assert {"chat/run-1.sh", "chat/run-2.sh", "chat/balancer.sh", "chat/haproxy.cfg"} <= paths


def test_replicas_that_do_not_fit_are_a_plan_error(tmp_path):
    text = CPU_REPLICAS.format(replicas=2).replace("cpu-server-64gb", "cpu-laptop-16gb").replace(
        "llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M", "qwen2.5-32b-instruct, engine: llama.cpp, "
        "quant: Q4_K_M")
    with pytest.raises(PlanError, match="replicas"):
        plan_for(tmp_path, text)


@pytest.mark.skipif(shutil.which("haproxy") is None and not __import__("os").environ.get("CI"),
                    reason="haproxy not installed (.ci/run installs it)")
def test_haproxy_config_is_valid_and_balances_by_least_connections(tmp_path):
    sp = plan_for(tmp_path, CPU_REPLICAS.format(replicas=3)).services[0]
    text = haproxy_config(sp)
    assert "balance leastconn" in text and "option httpchk GET /health" in text
    for port in sp.capacity.ports:
        assert f"127.0.0.1:{port} check" in text
    # a crashed instance: its requests are retried on another (tests/integration/test_scale_real.py runs it), and it
    # is marked down at its first refused connection
    assert "retry-on conn-failure empty-response" in text and "option redispatch 1" in text
    assert text.count("observe layer4 error-limit 1 on-error mark-down") == len(sp.capacity.ports)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    res = subprocess.run([shutil.which("haproxy") or "haproxy", "-c", "-f", str(cfg)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    cfg.write_text(text.replace("balance leastconn", "balance nonsense"))
    assert subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True).returncode != 0


def test_simulate_command_prints_levels(tmp_path):
    plan_for(tmp_path, TEAM_8X_H100.format(users=2000))
    res = CliRunner().invoke(app, ["simulate", str(tmp_path / "stack.yaml"), "--users", "100,2000,8000", "--json"])
    assert res.exit_code == 0, res.output
    levels = json.loads(res.output)[0]["levels"]
    assert [lv["users"] for lv in levels] == [100, 2000, 8000]
    assert levels[0]["ttft_p95_s"] < levels[2]["ttft_p95_s"]
    bad = CliRunner().invoke(app, ["simulate", str(tmp_path / "stack.yaml"), "--users", "ten"])
    assert bad.exit_code != 0 and "comma-separated" in bad.output


def test_simulate_command_jitter_separates_p95_from_p50(tmp_path):
    plan_for(tmp_path, CPU_REPLICAS.format(replicas=2))
    stack = str(tmp_path / "stack.yaml")
    flat = json.loads(CliRunner().invoke(app, ["simulate", stack, "--users", "2", "--json"]).output)[0]["levels"][0]
    assert flat["ttft_p95_s"] == pytest.approx(flat["ttft_p50_s"])
    res = CliRunner().invoke(app, ["simulate", stack, "--users", "2", "--jitter", "0.2", "--length-spread", "0.1",
                                   "--json"])
    assert res.exit_code == 0, res.output
    lv = json.loads(res.output)[0]["levels"][0]
    assert lv["ttft_p95_s"] > 1.15 * lv["ttft_p50_s"]
    assert lv["requests"] >= 300
    bad = CliRunner().invoke(app, ["simulate", stack, "--jitter", "-1"])
    assert bad.exit_code != 0


def test_cpu_curve_is_the_forecasts_step(tmp_path):
    """One CPU decode model: a llama.cpp instance's curve is the step the plan's forecast takes (speed.StepParts:
    the CPU line's share of the RAM bandwidth, tiles of 4 streams in one pass at the batch MFU, the streams past whole
    tiles a pass each), so the simulator's one user decodes at the forecast's single stream. Before, the curve read
    the weights at the whole RAM bandwidth: 16.4 tokens/s for one user of an 8B Q4_K_M on cpu-server-64gb where the
    forecast said 9.9."""
    from stackgen.plan import speed
    from stackgen.plan.capacity import fleet_curves, instance_of

    cpu = plan_for(tmp_path / "c", CPU_REPLICAS.format(replicas=2))
    sp, hw = cpu.services[0], cpu.hardware
    c = fleet_curves(sp, hw)[0]
    inst = instance_of(sp, hw)
    parts = speed.step_inputs(sp.engine, sp.model, inst.memory, inst.hardware, threads=inst.threads,
                              avg_context=speed.mean_context(inst.memory, sp.workload),
                              build=sp.engine_build).parts()
    assert c.step == parts and c.decode_tile == speed.GGML_CPU_DECODE_TILE == 4
    for n in (1, 2, 4, 5):
        assert c.step_s(n, 0) == pytest.approx(parts.step_s(n))
    assert c.step_s(4, 0) < 4 * c.step_s(1, 0)
    fc = speed.forecast_at(sp, hw, 1)
    one = simulate([c], users=1, prompt_tokens=sp.workload.prompt_tokens, output_tokens=sp.workload.output_tokens)
    assert one.tokens_per_s_per_user == pytest.approx(fc.single_stream_tokens_per_s, rel=0.02)


def test_more_replicas_than_gpus_says_why_and_what_to_write(write_stack):
    """replicas: 3 on one RTX 4090 said '3 x 1 thread: no layout of the engine allows it' (threads, on a GPU plan);
    each GPU instance takes a GPU of its own."""
    from stackgen.errors import PlanError
    from stackgen.host.facts import HostFacts
    from stackgen.plan.resolve import resolve
    from stackgen.spec.stack import load_stack

    f = write_stack("version: 1\nhardware: rtx-4090\nworkload: {concurrent_users: 8, context_tokens: 8192}\n"
                    "services:\n  chat: {model: qwen2.5-7b-instruct, quant: Q4_K_M, engine: llama.cpp, replicas: 3}\n")
    with pytest.raises(PlanError) as err:
        resolve(load_stack(f), HostFacts(hardware=None))
    assert str(err.value) == f"{f}:5:82: " + (  # where the stack file writes it
        "services.chat.replicas: 3 instances of llama.cpp do not fit GeForce RTX 4090 (3 x TP1: each instance takes a "
        "GPU of its own and GeForce RTX 4090 has 1 (set replicas: 1 or fewer, or add GPUs; concurrent users share "
        "one instance's slots))")
