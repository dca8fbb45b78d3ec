"""Multi-node (issue 7): the `hardware: {nodes: [...]}` shape, its positional errors, the planner's split (vLLM TP in a
node x PP across nodes with Ray, or llama.cpp RPC) and the multi-node artifacts (LeaderWorkerSet validated as core
pod templates, since kubernetes-validate has no schema for the CRD)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stackgen.cli import load_and_plan
from stackgen.errors import PlanError, RenderError, SpecError
from stackgen.render.artifact import RenderContext, render_plan
from stackgen.spec.stack import load_stack
from stackgen.render.targets.kubernetes import KUBERNETES_VERSION, pod_templates

GOLDEN = Path(__file__).parent.parent / "golden"
HOST = GOLDEN / "vllm-team-api" / "host.json"


def write(tmp_path: Path, hardware: str, model: str = "llama-3.1-405b-instruct", quant: str = "bf16",
          extra: str = "") -> Path:
    p = tmp_path / "stack.yaml"
    p.write_text(f"version: 1\nname: mn\nhardware:\n{hardware}workload: team-api\nservices:\n  chat:\n"
                 f"    model: {model}\n    quant: {quant}\n{extra}targets: [script, systemd, kubernetes]\n")
    return p


def plan(path: Path):
    return load_and_plan(path, HOST)[1]


TWO_DGX = "  nodes:\n    - hardware: dgx-h100\n      count: 2\n      addresses: [10.0.0.1, 10.0.0.2]\n"


# ---------------------------------------------------------------------------------------------- spec


def test_nodes_bind_to_machines_with_addresses(tmp_path):
    stack = load_stack(write(tmp_path, TWO_DGX))
    assert [n.address for n in stack.nodes] == ["10.0.0.1", "10.0.0.2"]
    assert stack.hardware == stack.nodes[0].hardware and stack.hardware.gpu_count == 8
    assert stack.hardware_label == "2 nodes of dgx-h100"


def test_default_addresses(tmp_path):
    stack = load_stack(write(tmp_path, "  nodes:\n    - hardware: dgx-h100\n      count: 2\n"))
    assert [n.address for n in stack.nodes] == ["node-0", "node-1"]


def test_a_single_machine_stack_has_no_nodes(tmp_path):
    assert load_stack(write(tmp_path, "  dgx-h100\n")).nodes == ()


@pytest.mark.parametrize("hardware,path,line,words", [
    ("  nodes:\n    - hardware: dgx-h10\n", "hardware.nodes.0.hardware", 5, "unknown hardware profile"),
    ("  nodes:\n    - hardware: dgx-h100\n      count: 2\n      addresses: [10.0.0.1]\n",
     "hardware.nodes.0.addresses", 7, "1 addresses for count 2"),
    ("  nodes:\n    - hardware: dgx-h100\n      cont: 2\n", "hardware.nodes.0.cont", 6, "unknown key"),
    ("  nodes:\n    - hardware: dgx-h100\n      count: 0\n", "hardware.nodes.0.count", 6, "must be at least 1"),
    ("  nodes: []\n", "hardware.nodes", 4, "at least 1"),
    ("  nodes:\n    - hardware: detect\n", "hardware.nodes.0.hardware", 5, "cannot be `detect`ed"),
    ("  nodes:\n    - hardware: dgx-h100\n      count: 2\n      addresses: [10.0.0.1, 10.0.0.1]\n",
     "hardware.nodes.0.addresses.1", 7, "used twice"),
    ("  nodes:\n    - hardware: dgx-h100\n      addresses: ['a b']\n", "hardware.nodes.0.addresses.0", 6, "pattern"),
])
def test_bad_nodes_are_reported_at_their_position(tmp_path, hardware, path, line, words):
    with pytest.raises(SpecError) as exc:
        load_stack(write(tmp_path, hardware))
    problems = exc.value.problems
    assert len(problems) == 1, problems
    assert any(p.path == path and p.line == line and words in p.message for p in problems), problems


# ---------------------------------------------------------------------------------------------- planner


def test_405b_bf16_on_two_dgx_nodes_is_vllm_tp8_pp2_over_ray():
    sp = plan(GOLDEN / "multinode-vllm-405b" / "stack.yaml").service("chat")
    assert sp.engine == "vllm"
    assert (sp.memory.tensor_parallel, sp.memory.pipeline_parallel, sp.memory.nodes) == (8, 2, 2)
    assert sp.topology.kind == "vllm-ray" and [n.role for n in sp.topology.nodes] == ["head", "worker"]
    cmd = " ".join(sp.command)
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend ray" in cmd
    text = " ".join(sp.reasons)
    assert "does not fit one node" in text and "16384 x 2 bytes" in text and "25 GbE" in text
    assert "tensor parallel stays inside each node" in text
    assert sp.to_json()["topology"]["nodes"][1]["address"] == "10.0.0.2"


def test_405b_q4_over_workstations_is_llamacpp_rpc_in_proportion_to_memory():
    sp = plan(GOLDEN / "multinode-llama-rpc-405b" / "stack.yaml").service("chat")
    assert sp.engine == "llama.cpp" and sp.topology.kind == "llama-rpc"
    assert sum(sp.memory.node_layers) == sp.model.layers == 126
    i = sp.command.index("--rpc")
    assert sp.command[i + 1] == "192.168.1.11:50052,192.168.1.12:50052,192.168.1.13:50052,192.168.1.20:50052"
    assert "-ts" not in sp.command  # llama.cpp spreads layers over local + RPC devices by free memory
    assert "identical GPUs" in sp.rejected["vllm"]
    assert any("weights" in r and "192.168.1.20" in r for r in sp.reasons)


def test_a_model_that_fits_one_node_is_planned_exactly_as_on_one_machine(tmp_path):
    multi = plan(write(tmp_path, TWO_DGX, model="llama-3.1-70b-instruct")).service("chat")
    (tmp_path / "one").mkdir()
    single = plan(write(tmp_path / "one", "  dgx-h100\n", model="llama-3.1-70b-instruct")).service("chat")
    assert multi.topology is None
    assert multi.command == single.command and multi.memory == single.memory
    assert "topology" not in multi.to_json()


def test_smallest_pp_that_fits(tmp_path):
    hw = "  nodes:\n    - hardware: dgx-h100\n      count: 4\n"
    sp = plan(write(tmp_path, hw)).service("chat")
    assert sp.memory.pipeline_parallel == 2 and len(sp.topology.nodes) == 2


def test_too_big_for_the_whole_cluster_names_both_engines(tmp_path):
    hw = "  nodes:\n    - hardware: rtx-4090\n      count: 2\n"
    with pytest.raises(PlanError) as exc:
        plan(write(tmp_path, hw, quant="Q4_K_M", extra="    engine: llama.cpp\n"))
    assert "nor split over the 2 nodes" in str(exc.value)


# ---------------------------------------------------------------------------------------------- artifacts


def test_leaderworkerset_shape_and_pod_templates_validate_as_core_pods():
    kv = pytest.importorskip("kubernetes_validate")
    p = plan(GOLDEN / "multinode-vllm-405b" / "stack.yaml")
    (art,) = render_plan(p, RenderContext("stack.yaml"), ["kubernetes"])
    docs = list(yaml.safe_load_all(art.content))
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    t = lws["spec"]["leaderWorkerTemplate"]
    assert t["size"] == 2 and t["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = t["leaderTemplate"]["spec"]["containers"][0]
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert "--pipeline-parallel-size" in leader["args"] and "ray start --head" in leader["command"][2]
    assert "LWS_LEADER_ADDRESS" in t["workerTemplate"]["spec"]["containers"][0]["command"][2]
    # kubernetes-validate has no schema for the LWS CRD: validate its pod templates (and every core object).
    for doc in [d for d in docs if d["kind"] != "LeaderWorkerSet"] + pod_templates(lws):
        kv.validate(doc, KUBERNETES_VERSION, strict=True)


def test_llama_rpc_is_refused_by_the_kubernetes_target():
    from stackgen.errors import RenderError
    p = plan(GOLDEN / "multinode-llama-rpc-405b" / "stack.yaml")
    with pytest.raises(RenderError, match="script and systemd"):
        render_plan(p, RenderContext("stack.yaml"), ["kubernetes"])


@pytest.mark.parametrize("target", ["compose", "quadlet", "llama-swap"])
def test_one_host_container_targets_refuse_a_multi_node_service(target):
    """compose and quadlet rendered the 405B over two DGX as one container on one host (TP 8 x PP 2 with 8 GPUs, no
    Ray head or worker): it could not start. Like llama-swap, they now refuse and name the targets that can."""
    _, plan = load_and_plan(GOLDEN / "multinode-vllm-405b" / "stack.yaml", None)
    with pytest.raises(RenderError, match=rf"services.chat: a multi-node service \(2 machines\) cannot be started by "
                                          rf"the {target} target on one host; use the script or systemd target"):
        render_plan(plan, RenderContext("stack.yaml"), [target])


def test_an_rpc_worker_unit_accepts_only_its_head():
    """ggml-rpc-server is unauthenticated (engines.md 1.6: never on an open network): each worker's unit denies every
    address but loopback and the head's, which the stack names; a firewall was only asked for in a comment."""
    _, plan = load_and_plan(GOLDEN / "multinode-llama-rpc-405b" / "stack.yaml", None)
    sp = plan.services[0]
    head = sp.topology.head.address
    units = {a.path: a.content for a in render_plan(plan, RenderContext("stack.yaml"), ["systemd"])}
    workers = [t for p, t in units.items() if "-rpc-" in p and p.endswith(".service")]
    assert len(workers) == len(sp.topology.workers) >= 1
    for text in workers:
        assert "\nIPAddressDeny=any\n" in text and f"\nIPAddressAllow=localhost {head}\n" in text
