"""`plan --json` when nothing fits: the plan is printed with "fits": false and each engine's numbers, exit code 1."""

from __future__ import annotations

import json
import textwrap

from stackgen.cli import EX_ERROR

NOFIT = textwrap.dedent("""\
    version: 1
    name: too-big
    hardware: rtx-4060
    workload: dev-loop
    services:
      small:
        model: llama-3.2-3b-instruct
      big:
        model: llama-3.1-70b-instruct
""")


def test_plan_json_prints_the_unfit_service_and_exits_1(cli, tmp_path):
    stack = tmp_path / "stack.yaml"
    stack.write_text(NOFIT)
    res = cli("plan", str(stack), "--json")
    assert res.exit_code == EX_ERROR
    out = res.stdout if hasattr(res, "stdout") else res.output
    data = json.loads(out[: out.rindex("}") + 1])
    small, big = data["services"]
    assert small["name"] == "small" and small["fits"] is True  # planned before the failure, still reported
    assert big["name"] == "big" and big["fits"] is False
    llama = big["candidates"]["llama.cpp"]
    assert llama["memory"]["weights_bytes"] > 30e9 and "short" in llama["shortfall"]
    assert set(big["candidates"]) >= {"llama.cpp", "vllm", "ollama"}


def test_plan_text_when_nothing_fits_prints_no_json(cli, tmp_path):
    stack = tmp_path / "stack.yaml"
    stack.write_text(NOFIT)
    res = cli("plan", str(stack))
    assert res.exit_code == EX_ERROR and not res.output.lstrip().startswith("{")
