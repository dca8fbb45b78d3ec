"""One start-up budget (issue 14.2): the plan computes it once (ServicePlan.startup_budget_s) and every way of running
the service renders that number: `up`'s wait, systemd's and quadlet's TimeoutStartSec, compose's start_period, the
kubernetes startupProbe and llama-swap's healthCheckTimeout."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from stackgen.run.native import budget_for
from stackgen.plan.plan import startup_budget_s
from stackgen.render.artifact import RenderContext
from stackgen.render.targets.compose import render_compose
from stackgen.render.targets.kubernetes import STARTUP_PERIOD_S, render_kubernetes
from stackgen.render.targets.llama_swap import llama_swap_target
from stackgen.render.targets.quadlet import PULL_S, quadlet_target
from stackgen.render.targets.systemd import render_units
from tools.stacks import plan_for

CTX = RenderContext("stack.yaml")

STACK = """
version: 1
hardware: rtx-4090
workload: team-api
services:
  chat: {{model: llama-3.1-8b-instruct, engine: {engine}}}
"""


@pytest.mark.parametrize("engine", ["llama.cpp", "vllm"])
def test_every_target_renders_the_plans_one_budget(tmp_path, engine):
    plan = plan_for(tmp_path, STACK.format(engine=engine))
    sp = plan.services[0]
    budget = sp.startup_budget_s
    assert budget == startup_budget_s(sp.memory.weights_bytes, 120.0 if engine == "vllm" else 0.0,
                                      sp.fetches_weights)
    assert budget_for(sp) == budget == budget_for(sp, containers=True)
    unit = render_units(plan, CTX)[0].content
    assert re.search(r"^TimeoutStartSec=(\d+)s$", unit, re.M).group(1) == str(budget)
    compose = yaml.safe_load(next(a for a in render_compose(plan, CTX) if a.path.endswith("compose.yaml")).content)
    assert compose["services"]["chat"]["healthcheck"]["start_period"] == f"{budget}s"
    docs = list(yaml.safe_load_all(render_kubernetes(plan, CTX)[0].content))
    pod = next(d for d in docs if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert pod["startupProbe"]["failureThreshold"] == math.ceil(budget / STARTUP_PERIOD_S)
    quadlet = next(a for a in quadlet_target(plan, CTX) if a.path.endswith(".container")).content
    assert f"TimeoutStartSec={PULL_S + budget}s" in quadlet
    swap = yaml.safe_load(next(a for a in llama_swap_target(plan, CTX) if a.path.endswith(".yaml")).content)
    assert swap["healthCheckTimeout"] == budget


def test_a_fetched_model_gets_its_download_time():
    w = 16_000_000_000
    assert startup_budget_s(w, fetched=True) - startup_budget_s(w) >= w / 25_000_000 - 10
