"""The kubernetes target: every manifest we can generate passes kubernetes-validate in strict mode (no unknown
fields) against the pinned Kubernetes version, and the manifests carry the sizes, probes, GPU resources, secrets
and hardening the plan implies."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stackgen.cli import load_and_plan
from stackgen.errors import RenderError
from stackgen.plan.plan import startup_budget_s
from stackgen.render.artifact import RenderContext, render_plan
from stackgen.render.targets.kubernetes import (
    KUBERNETES_VERSION, memory_mib, pvc_gib, render_kubernetes,
)
from tools.which import tool

kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' installs kubernetes-validate")

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = ["cpu-llamacpp", "ollama-dev-loop", "seed-70b-rtx4090", "vllm-team-api", "k8s-vllm-team-api"]
GI = 2**30

STACK = """version: 1
name: {name}
hardware: {hardware}
workload: team-api
services:
  chat:
    model: {model}
{extra}targets: [kubernetes]
{serve}"""
SERVE_LAN = "serve:\n  host: 0.0.0.0\n  api_key_env: DEMO_API_KEY\n"
# vLLM's key leaves /invocations open, so vLLM stays on loopback (with its key): its pods get a NetworkPolicy
SERVE_KEYED_LOCAL = "serve:\n  host: 127.0.0.1\n  api_key_env: DEMO_API_KEY\n"


def plan_for(case: str):
    folder = GOLDEN / case
    host = folder / "host.json"
    return load_and_plan(folder / "stack.yaml", host if host.exists() else None)[1]


def docs_of(plan) -> dict[str, list[dict]]:
    return {a.path: list(yaml.safe_load_all(a.content)) for a in render_kubernetes(plan, RenderContext("stack.yaml"))}


def kinds(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def container(docs: list[dict]) -> dict:
    (c,) = kinds(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def validate_strict(doc: dict) -> None:
    kv.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.fixture
def stack_plan(write_stack):
    def make(hardware: str, model: str = "llama-3.1-8b-instruct", extra: str = "", name: str = "demo",
             serve: str = SERVE_LAN):
        path = write_stack(STACK.format(hardware=hardware, model=model, extra=extra, name=name, serve=serve))
        return load_and_plan(path, None)[1]

    return make


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("case", CASES)
def test_every_golden_stack_renders_strictly_valid_manifests(case):
    rendered = docs_of(plan_for(case))
    assert rendered, case
    for path, docs in rendered.items():
        names = [d["kind"] for d in docs]
        if names[0] == "ConfigMap":  # Ollama's Modelfile
            names = names[1:]
        assert names[:3] == ["PersistentVolumeClaim", "Service", "Deployment"], path
        assert names[3:] in ([], ["NetworkPolicy"]), path
        for doc in docs:
            validate_strict(doc)


@pytest.mark.parametrize("hardware,model,engine", [
    ("rx-7900-xtx", "llama-3.1-8b-instruct", "llama.cpp"),
    ("mi300x", "llama-3.1-8b-instruct", "vllm"),
    ("arc-a770", "llama-3.1-8b-instruct", "llama.cpp"),
    ("cpu-server-64gb", "llama-3.1-8b-instruct", "llama.cpp"),
    ("rtx-4090", "qwen2.5-7b-instruct", "ollama"),
    ("2x a100-80gb", "llama-3.1-70b-instruct", "vllm"),
])
def test_other_hardware_renders_strictly_valid_manifests(stack_plan, hardware, model, engine):
    serve = "" if engine == "ollama" else SERVE_KEYED_LOCAL if engine == "vllm" else SERVE_LAN
    plan = stack_plan(hardware, model, extra=f"    engine: {engine}\n", serve=serve)
    for docs in docs_of(plan).values():
        for doc in docs:
            validate_strict(doc)


def test_strict_mode_rejects_an_unknown_field():
    """Guards the guard: strict validation really fails on a field Kubernetes does not know."""
    docs = docs_of(plan_for("k8s-vllm-team-api"))["kubernetes/chat.yaml"]
    bad = kinds(docs)["Deployment"]
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kv.ValidationError):
        validate_strict(bad)


def test_the_cli_validates_the_rendered_files(tmp_path):
    exe = tool("kubernetes-validate")
    cmd = [exe] if exe else [sys.executable, "-m", "kubernetes_validate"]
    arts = render_plan(plan_for("k8s-vllm-team-api"), RenderContext("stack.yaml"), ["kubernetes"])
    files = []
    for art in arts:
        dest = tmp_path / art.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(art.content, encoding="utf-8")
        files.append(str(dest))
    r = subprocess.run(cmd + ["-k", KUBERNETES_VERSION, "--strict", *files], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == 4, r.stdout  # PVC, Service, Deployment, NetworkPolicy


def test_golden_expected_matches_and_validates():
    expected = GOLDEN / "k8s-vllm-team-api" / "expected" / "kubernetes" / "chat.yaml"
    (art,) = render_plan(plan_for("k8s-vllm-team-api"), RenderContext("stack.yaml"), ["kubernetes"])
    assert art.content == expected.read_text(encoding="utf-8")
    for doc in yaml.safe_load_all(expected.read_text(encoding="utf-8")):
        validate_strict(doc)


# ---------------------------------------------------------------------------------------------- contents


def test_vllm_manifest_follows_the_plan():
    plan = plan_for("k8s-vllm-team-api")
    sp = plan.service("chat")
    docs = docs_of(plan)["kubernetes/chat.yaml"]
    k = kinds(docs)
    c = container(docs)
    assert k["Deployment"]["spec"]["replicas"] == 1
    assert k["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}
    assert k["Service"]["spec"]["type"] == "ClusterIP"
    assert k["Service"]["spec"]["ports"][0]["port"] == sp.port
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "4"
    assert c["args"][0] == sp.model_ref and c["args"][0] != "serve"  # the image's entrypoint is `vllm serve`
    # GPUs: tensor parallel size, on NVIDIA's device plugin
    assert c["resources"]["limits"]["nvidia.com/gpu"] == sp.memory.tensor_parallel == 4
    # PVC: weights x 1.2 rounded up to Gi
    storage = k["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"]
    assert storage == f"{math.ceil(sp.memory.weights_bytes * 1.2 / GI)}Gi"
    # memory: request = host bytes in Mi, limit = 1.25 x request + the memory-backed /dev/shm
    req = math.ceil(sp.memory.host_bytes / 2**20)
    assert c["resources"]["requests"]["memory"] == f"{req}Mi"
    assert c["resources"]["limits"]["memory"] == f"{math.ceil(req * 1.25) + 16384}Mi"
    assert c["resources"]["requests"]["cpu"] == str(sp.threads)
    # /dev/shm as a memory emptyDir
    vols = {v["name"]: v for v in k["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    # probes: /health on the named port; the startup budget covers a download of the weights
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    s = c["startupProbe"]
    assert s["failureThreshold"] * s["periodSeconds"] >= sp.startup_budget_s >= startup_budget_s(sp.memory.weights_bytes, 0, True)


def test_api_key_comes_from_a_secret_reference_never_the_value(monkeypatch):
    monkeypatch.setenv("TEAM_API_KEY", "sk-very-secret-value")
    plan = plan_for("k8s-vllm-team-api")
    text = render_kubernetes(plan, RenderContext("stack.yaml"))[0].content
    assert "sk-very-secret-value" not in text
    env = {e["name"]: e for e in container(list(yaml.safe_load_all(text)))["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "team-api-chat-api-key", "key": "api-key", "optional": False}
    assert "value" not in env["VLLM_API_KEY"]


def test_labels_and_selector():
    docs = docs_of(plan_for("k8s-vllm-team-api"))["kubernetes/chat.yaml"]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "chat"
        assert labels["app.kubernetes.io/part-of"] == "team-api"
        assert labels["app.kubernetes.io/managed-by"] == "stackgen"
    dep = kinds(docs)["Deployment"]
    selector = dep["spec"]["selector"]["matchLabels"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert kinds(docs)["Service"]["spec"]["selector"] == selector


@pytest.mark.parametrize("case", CASES)
def test_hardening(case):
    for docs in docs_of(plan_for(case)).values():
        pod = kinds(docs)["Deployment"]["spec"]["template"]["spec"]
        c = container(docs)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # a Service named vllm would inject VLLM_PORT
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        engine = plan_for(case).services[0].engine
        assert c["securityContext"]["readOnlyRootFilesystem"] is (engine != "vllm")
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/tmp", "/models", "/home/stackgen"} <= mounts


def test_llamacpp_gpu_count_and_probes():
    plan = plan_for("seed-70b-rtx4090")
    sp = plan.service("chat")
    c = container(docs_of(plan)["kubernetes/chat.yaml"])
    assert sp.memory.gpu_layers > 0
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["ports"][0]["containerPort"] == 8080
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["args"][0] != "/app/llama-server" and "--host" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["LLAMA_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "seed-70b-chat-api-key"


def test_loopback_services_get_a_network_policy_lan_services_do_not():
    local = kinds(docs_of(plan_for("ollama-dev-loop"))["kubernetes/coder.yaml"])
    policy = local["NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == local["Deployment"]["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/part-of": "ollama-dev"}}}]}]
    lan = kinds(docs_of(plan_for("compose-llama-cuda-key"))["kubernetes/chat.yaml"])  # llama.cpp on 0.0.0.0, keyed
    assert "NetworkPolicy" not in lan
    assert "NetworkPolicy" in kinds(docs_of(plan_for("k8s-vllm-team-api"))["kubernetes/chat.yaml"])  # vLLM: loopback


def test_cpu_service_requests_no_gpu():
    c = container(docs_of(plan_for("cpu-llamacpp"))["kubernetes/assistant.yaml"])
    assert not any(k.endswith("/gpu") for k in c["resources"]["limits"])


def test_amd_gpu_uses_the_amd_device_plugin(stack_plan):
    plan = stack_plan("mi300x", extra="    engine: vllm\n", serve=SERVE_KEYED_LOCAL)
    c = container(docs_of(plan)["kubernetes/chat.yaml"])
    assert c["resources"]["limits"]["amd.com/gpu"] == 1
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["image"].startswith("vllm/vllm-openai-rocm:")


def test_ollama_probes_api_version():
    c = container(docs_of(plan_for("ollama-dev-loop"))["kubernetes/coder.yaml"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/api/version", "port": "http"}
    assert c["args"] == ["serve"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434"
    docs = kinds(docs_of(plan_for("ollama-dev-loop"))["kubernetes/coder.yaml"])
    modelfile = docs["ConfigMap"]["data"]["Modelfile"]
    assert "FROM qwen2.5:7b" in modelfile and "num_ctx" in modelfile
    assert {"name": "modelfile", "mountPath": "/stackgen", "readOnly": True} in c["volumeMounts"]
    assert env["OLLAMA_MODELS"].startswith("/models/")


def test_mlx_is_refused_with_a_clear_error():
    plan = plan_for("mac-mlx-dev-loop")
    assert plan.services[0].engine == "mlx"
    with pytest.raises(RenderError, match="MLX.*Metal"):
        render_kubernetes(plan, RenderContext("stack.yaml"))


def test_too_long_names_are_refused(stack_plan):
    plan = stack_plan("rtx-4090", name="a" * 60)
    with pytest.raises(RenderError, match="63 characters"):
        render_kubernetes(plan, RenderContext("stack.yaml"))


def test_output_is_deterministic_and_has_no_yaml_aliases():
    plan = plan_for("k8s-vllm-team-api")
    a = render_kubernetes(plan, RenderContext("stack.yaml"))
    b = render_kubernetes(plan, RenderContext("stack.yaml"))
    assert a == b
    assert "&id" not in a[0].content and "*id" not in a[0].content


def test_sizes():
    assert pvc_gib(10 * GI) == 12
    assert pvc_gib(1) == 1
    sp = plan_for("seed-70b-rtx4090").service("chat")
    req, limit = memory_mib(sp)
    assert req == math.ceil(sp.memory.host_bytes / 2**20) and limit == math.ceil(req * 1.25)


def test_a_gpu_pod_is_not_limited_below_its_runtimes_memory():
    """A CUDA llama-server of a 32B with every layer on the GPU plans ~80 MiB of its own host buffers: the limit was
    100Mi, which the CUDA runtime's context and libraries alone pass (OOM-killed at start)."""
    from stackgen.render.targets.kubernetes import GPU_PROCESS_FLOOR_MIB

    sp = plan_for("compose-llama-cuda-key").services[0]
    assert sp.memory.host_bytes < 200 * 2**20 and sp.memory.gpu_layers == sp.memory.total_layers
    req, limit = memory_mib(sp)
    assert limit == GPU_PROCESS_FLOOR_MIB >= 1024 > req
    cpu = plan_for("cpu-llamacpp").services[0]
    assert memory_mib(cpu)[1] == math.ceil(memory_mib(cpu)[0] * 1.25)  # a CPU pod: the plan's figure x 1.25


# ---------------------------------------------------------------------------------------------- shared GPUs

SHARED = """version: 1
name: shared
hardware: {hardware}
workload: {{concurrent_users: 2, context_tokens: 4096, prompt_tokens: 1000, output_tokens: 200}}
services:
  chat: {{model: llama-3.1-8b-instruct, engine: llama.cpp}}
  small: {{model: qwen2.5-7b-instruct, engine: llama.cpp}}
targets: [kubernetes]
"""


def test_services_that_share_a_gpu_get_the_device_plugins_time_slicing(write_stack):
    """Two llama.cpp services planned on one RTX 4090 (memory.py budgets the GPU between them) each requested
    nvidia.com/gpu: 1, so on a one-GPU node the second pod stayed Pending. The target now writes the NVIDIA device
    plugin's time-slicing ConfigMap (GPU Operator docs' format: 2 replicas of the one GPU), strictly valid, and each
    service's header says which services it shares with and what to apply."""
    plan = load_and_plan(write_stack(SHARED.format(hardware="rtx-4090")), None)[1]
    assert all(sp.memory.gpu_layers == sp.memory.total_layers for sp in plan.services)  # both on the GPU
    arts = {a.path: a.content for a in render_kubernetes(plan, RenderContext("stack.yaml"))}
    assert sorted(arts) == ["kubernetes/chat.yaml", "kubernetes/gpu-time-slicing.yaml", "kubernetes/small.yaml"]
    (doc,) = yaml.safe_load_all(arts["kubernetes/gpu-time-slicing.yaml"])
    validate_strict(doc)
    assert doc["metadata"] == {"name": "shared-gpu-time-slicing", "namespace": "gpu-operator"}
    config = yaml.safe_load(doc["data"]["any"])
    assert config["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 2}]
    assert '"name": "shared-gpu-time-slicing", "default": "any"' in arts["kubernetes/gpu-time-slicing.yaml"]
    for svc, other in (("chat", "small"), ("small", "chat")):
        text = arts[f"kubernetes/{svc}.yaml"]
        assert f"on the same GPU(s) as {other}: their pods request 2 nvidia.com/gpu where the node has 1" in text
        assert "kubernetes/gpu-time-slicing.yaml" in text
        res = container(list(yaml.safe_load_all(text)))["resources"]
        assert res["limits"]["nvidia.com/gpu"] == 1


def test_no_time_slicing_when_each_service_has_its_gpus(write_stack):
    """One service per GPU set (a single service; two on a CPU machine): nothing shared, no extra file."""
    one = load_and_plan(write_stack(SHARED.format(hardware="rtx-4090").replace(
        "  small: {model: qwen2.5-7b-instruct, engine: llama.cpp}\n", "")), None)[1]
    cpu = load_and_plan(write_stack(SHARED.format(hardware="cpu-server-64gb")), None)[1]
    for plan in (one, cpu):
        arts = render_kubernetes(plan, RenderContext("stack.yaml"))
        assert "kubernetes/gpu-time-slicing.yaml" not in [a.path for a in arts]
        assert not any("same GPU(s)" in a.content for a in arts)


def test_amd_services_sharing_a_gpu_are_told_the_plugin_grants_whole_gpus(write_stack):
    """AMD's device plugin has no time-slicing: no config file, and the header says what to do instead."""
    plan = load_and_plan(write_stack(SHARED.format(hardware="rx-7900-xtx")), None)[1]
    arts = {a.path: a.content for a in render_kubernetes(plan, RenderContext("stack.yaml"))}
    assert sorted(arts) == ["kubernetes/chat.yaml", "kubernetes/small.yaml"]
    assert "their pods request 2 amd.com/gpu where the node has 1" in arts["kubernetes/chat.yaml"]
    assert "device plugin grants whole GPUs" in arts["kubernetes/small.yaml"]


def test_kubernetes_md_describes_what_the_target_writes_for_one_instance_and_for_replicas():
    """docs/kubernetes.md said every Deployment has 1 replica and strategy Recreate on a ReadWriteOnce PVC and listed
    the HPA as not done, while a replicated service gets N pods, RollingUpdate, ReadWriteMany and an HPA (audit a4
    #10; docs/targets.md, Replicas, said so). Every kind, strategy and access mode the committed goldens' manifests
    use is in the documents section, and "Not done yet" names nothing the target writes."""
    doc = (Path(__file__).parents[2] / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    documents = doc.split("## Sizes and probes", 1)[0]
    not_done = doc.split("## Not done yet", 1)[1]
    kinds, strategies, modes = set(), set(), set()
    for case in ("fleet-llamacpp-4090", "fleet-vllm-dp-h100", "k8s-vllm-team-api", "sglang-agents-h100"):
        for path in sorted((GOLDEN / case / "expected" / "kubernetes").glob("*.yaml")):
            for d in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if not d or d.get("kind") == "ConfigMap":
                    continue
                kinds.add(d["kind"])
                spec = d.get("spec") or {}
                if d["kind"] == "Deployment":
                    strategies.add(spec["strategy"]["type"])
                modes.update(spec.get("accessModes", []))
    assert {"HorizontalPodAutoscaler", "Deployment", "PersistentVolumeClaim"} <= kinds
    assert strategies == {"Recreate", "RollingUpdate"} and modes == {"ReadWriteOnce", "ReadWriteMany"}
    for word in kinds | strategies | modes:
        assert word in documents, word
    for word in kinds:
        assert word not in not_done, word
    assert "HPA" not in not_done
