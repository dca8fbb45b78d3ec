"""The `kubernetes` target: kubernetes/<service>.yaml per service (PersistentVolumeClaim, Service, Deployment).

Design choices (docs/kubernetes.md has the full list and the mapping to vLLM production-stack's values.yaml):
- Manifests are built as data and written with yaml.safe_dump_all: nothing from the stack can change the documents'
  structure, and the output is deterministic.
- One replica with strategy Recreate: the weights live on a ReadWriteOnce PVC and GPUs are scarce, so a rolling
  update would leave the new pod Pending behind the old one.
- Inside the pod the engine listens on its own default port (vLLM 8000 as in production-stack, llama.cpp 8080,
  Ollama 11434) on 0.0.0.0; the ClusterIP Service publishes the stack's port.
- startupProbe budget (failureThreshold x periodSeconds) covers the plan's one start-up budget
  (ServicePlan.startup_budget_s), so a slow load is never killed by the liveness probe.
- Pods run as uid/gid 1000 (runAsNonRoot) with no capabilities, no privilege escalation and RuntimeDefault seccomp.
  The official images default to root, but the engines run as any user when HOME and caches are writable: HOME and
  /tmp are emptyDirs, weights and download caches live on the PVC (fsGroup 1000 makes it writable).
  llama.cpp and Ollama get a read-only root filesystem; vLLM keeps it writable (Triton/torch.compile/FlashInfer
  write kernels outside HOME), like the compose target.
- API keys come from a Secret (`<stack>-<service>-api-key`, key `api-key`) by reference; the value is never written.
- A service whose serve.host is loopback gets a NetworkPolicy: only pods labelled with the stack's
  `app.kubernetes.io/part-of` may connect (a ClusterIP is otherwise open to every pod in the cluster).
- enableServiceLinks is off: Kubernetes would otherwise inject `<SERVICE>_PORT=tcp://...` variables, and a Service
  called `vllm` sets VLLM_PORT, which vLLM reads as its own setting.
- MLX is refused: it needs Metal, and there is no Linux image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import yaml

from stackgen import engines
from stackgen.render.engine_files import read_chat_template, render_modelfile
from stackgen.engines.base import LaunchContext
from stackgen.errors import RenderError
from stackgen.plan.plan import Plan, ServicePlan
from stackgen.render.artifact import Artifact, RenderContext
from stackgen.render.paths import local_weights, weight_files
from stackgen.spec.stack import LOOPBACK_HOSTS
from stackgen.render.targets import fleet, refuse_tls, register
from stackgen.engines.base import device_order
from stackgen.render.container_spec import (HF_TOKEN, TEMPLATE_MOUNT, accelerator, chat_template_file, engine_key_env,
                                            hub_fetched, hub_token_note, image_for, key_value_note)

K8S_DIR = "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the API version the manifests are validated against (tests: kubernetes-validate)
GPU_RESOURCE = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu", "intel": "gpu.intel.com/i915"}
UID = 1000
MODELS_MOUNT, HOME_MOUNT = "/models", "/home/stackgen"
STARTUP_PERIOD_S = 10
PVC_HEADROOM = 1.2
MEMORY_LIMIT_FACTOR = 1.25
GI, MI = 2**30, 2**20
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@register("kubernetes")
def render_kubernetes(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    refuse_tls(plan, "kubernetes", "TLS at the Ingress or Gateway in front of the Service")
    out = []
    shared = shared_gpus(plan)
    for sp in plan.services:
        docs = manifests(plan, sp, ctx)
        text = _header(plan, sp, ctx, shared) + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False,
                                                                   width=120, explicit_start=True)
        out.append(Artifact(f"{K8S_DIR}/{sp.name}.yaml", text))
    if "nvidia" in shared:
        out.append(_time_slicing(plan, ctx, shared["nvidia"]))
    return out


@dataclass(frozen=True)
class SharedGPUs:
    """A vendor's GPUs that the plan shares between services (shared_gpus): the pods' requests add up to more than
    the machine has."""
    requested: int  # GPUs the pods request in all (each service's gpu_request x its pods)
    available: int  # GPUs of the vendor the planned machine has
    services: tuple[str, ...]  # the services that request them

    @property
    def slices(self) -> int:
        """Time-slicing replicas per GPU so that every pod's request can be granted on one such node."""
        return math.ceil(self.requested / self.available)


def shared_gpus(plan: Plan) -> dict[str, SharedGPUs]:
    """Vendor -> SharedGPUs where the plan put several services on the same GPUs (memory.py budgets each GPU's memory
    among them) and their pods ask the device plugin for more GPUs than the machine has: Kubernetes grants whole
    GPUs, so the pods past the node's count stay Pending. Multi-node services run on nodes of their own."""
    requests: dict[str, list[tuple[str, int]]] = {}
    for sp in plan.services:
        gpu = gpu_request(sp) if sp.topology is None else None
        if gpu:
            requests.setdefault(gpu_vendor(sp), []).append((sp.name, gpu[1] * fleet.pods(sp)))
    out = {}
    for vendor, asks in requests.items():
        available = sum(g.count for g in plan.hardware.gpus if g.vendor == vendor and not g.unified)
        total = sum(n for _, n in asks)
        if len(asks) > 1 and available and total > available:
            out[vendor] = SharedGPUs(total, available, tuple(name for name, _ in asks))
    return out


TIME_SLICING_NAMESPACE = "gpu-operator"  # where NVIDIA's GPU Operator docs install it and look for the config


def _time_slicing(plan: Plan, ctx: RenderContext, shared: SharedGPUs) -> Artifact:
    """The NVIDIA device plugin's time-slicing config (GPU Operator, "Time-Slicing GPUs in Kubernetes",
    docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/gpu-sharing.html): each GPU advertised as `slices`
    nvidia.com/gpu, so the services the plan put on one GPU can all be scheduled there. Time-slicing isolates no
    memory: the plan's per-service GPU budgets are what keep them apart (each engine caps its own use)."""
    name = f"{plan.stack_name}-gpu-time-slicing"
    if len(name) > 63 or not DNS1035.match(name):
        raise RenderError(f"the time-slicing ConfigMap's name {name!r} (stack name + '-gpu-time-slicing') must be at "
                          "most 63 characters, start with a letter and end with a letter or digit; shorten `name:`")
    config = {"version": "v1", "flags": {"migStrategy": "none"},
              "sharing": {"timeSlicing": {"resources": [{"name": GPU_RESOURCE["nvidia"], "replicas": shared.slices}]}}}
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": TIME_SLICING_NAMESPACE},
           "data": {"any": yaml.safe_dump(config, sort_keys=False, default_flow_style=False).rstrip("\n")}}
    patch = ('{"spec": {"devicePlugin": {"config": {"name": "' + name + '", "default": "any"}}}}')
    lines = [ctx.header().rstrip("\n"),
             f"# Stack {plan.stack_name}: services {', '.join(shared.services)} share the node's "
             f"{shared.available} NVIDIA GPU(s) in the plan, and their pods request {shared.requested}. Kubernetes "
             "grants whole GPUs, so without this the pods past the first stay Pending.",
             f"# Time-slicing advertises each GPU as {shared.slices} nvidia.com/gpu (NVIDIA GPU Operator, "
             "\"Time-Slicing GPUs in Kubernetes\"). It isolates no memory: the plan's GPU budgets keep the services "
             "apart, so run only these pods on the node's GPUs.",
             f"# kubectl apply -f {K8S_DIR}/gpu-time-slicing.yaml",
             f"# kubectl patch clusterpolicies.nvidia.com/cluster-policy -n {TIME_SLICING_NAMESPACE} --type merge "
             f"-p '{patch}'"]
    return Artifact(f"{K8S_DIR}/gpu-time-slicing.yaml", "\n".join(lines) + "\n" + yaml.dump(
        doc, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=120, explicit_start=True))


class _BlockDumper(yaml.SafeDumper):
    """safe_dump with multi-line strings as literal blocks (the device plugin's config reads as the docs show it)."""


_BlockDumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v,
                                                                    style="|" if "\n" in v else None))


def manifests(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> list[dict]:
    """(Ollama's Modelfile ConfigMap,) PersistentVolumeClaim, Service, Deployment (and NetworkPolicy), in apply order."""
    engine = engines.get(sp.engine)
    if engine.container is None:
        raise RenderError(f"services.{sp.name}: the kubernetes target cannot run {engine.short}: {engine.no_container}"
                          f" (it serves on the Mac itself; use the script target)")
    name = resource_name(plan, sp)
    labels = _labels(plan, sp)
    if sp.topology is not None:
        if _chat_template(sp):
            raise RenderError(f"services.{sp.name}.chat_template: the kubernetes target ships a chat template to "
                              "single-node services only (drop chat_template, or use the systemd target)")
        return _multinode_manifests(plan, sp, name, labels)
    docs = [_pvc(sp, name, labels), _service(sp, name, labels), _deployment(plan, sp, name, labels)]
    if sp.replicas > 1:  # fleet hook: pods per instance, shared weights, an autoscaler (targets/fleet.py)
        _fleet(sp, docs, name, labels)
    if _chat_template(sp):
        docs.insert(0, _chat_template_config_map(plan, sp, name, labels))
    if engine.model_tag(sp) is not None:
        docs.insert(0, _modelfile_config_map(plan, sp, ctx, name, labels))
    if sp.host in LOOPBACK_HOSTS:
        docs.append(_network_policy(plan, name, labels))
    return docs


def resource_name(plan: Plan, sp: ServicePlan) -> str:
    name = f"{plan.stack_name}-{sp.name}"
    if len(name) > 63 or not DNS1035.match(name):
        raise RenderError(f"services.{sp.name}: the Kubernetes name {name!r} (stack name + service name) must be "
                          "at most 63 characters, start with a letter and end with a letter or digit; shorten "
                          "`name:` or the service name")
    return name


def secret_name(plan: Plan, sp: ServicePlan) -> str:
    return f"{plan.stack_name}-{sp.name}-api-key"


def hf_token_secret(plan: Plan) -> str:
    """The stack's optional Secret holding HF_TOKEN (key `token`) for services that fetch from the Hub."""
    return f"{plan.stack_name}-hf-token"


def _labels(plan: Plan, sp: ServicePlan) -> dict[str, str]:
    return {"app.kubernetes.io/name": sp.name, "app.kubernetes.io/instance": f"{plan.stack_name}-{sp.name}",
            "app.kubernetes.io/component": "inference-engine", "app.kubernetes.io/part-of": plan.stack_name,
            "app.kubernetes.io/managed-by": "stackgen"}


def _selector(labels: dict[str, str]) -> dict[str, str]:
    return {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}


# ---------------------------------------------------------------------------------------------- sizes


def pvc_gib(weights_bytes: int) -> int:
    return max(1, math.ceil(weights_bytes * PVC_HEADROOM / GI))


def startup_failure_threshold(sp: ServicePlan) -> int:
    """failureThreshold x periodSeconds covers the plan's one start-up budget."""
    return math.ceil(sp.startup_budget_s / STARTUP_PERIOD_S)


def shm_mib(sp: ServicePlan) -> int:
    return 16 * 1024 if sp.memory.tensor_parallel > 1 else 2 * 1024


GPU_PROCESS_FLOOR_MIB = 1024  # the smallest memory limit of a GPU pod (memory_mib); not measured here (no GPU)


def memory_mib(sp: ServicePlan) -> tuple[int, int]:
    """(request, limit) in MiB: request = host bytes, limit = request x 1.25 plus the memory-backed /dev/shm,
    which Kubernetes charges to the container's memory."""
    request = max(1, math.ceil(sp.memory.host_bytes / MI))
    limit = math.ceil(request * MEMORY_LIMIT_FACTOR) + (shm_mib(sp) if _image(sp).shared_memory else 0)
    if accelerator(sp) != "cpu":
        # the plan's host figure is the engine's own buffers; a GPU process also maps its runtime's libraries and
        # context into its resident memory (a CUDA context is hundreds of MiB), which a 100Mi limit OOM-kills
        limit = max(limit, GPU_PROCESS_FLOOR_MIB)
    return request, limit


def gpu_request(sp: ServicePlan) -> tuple[str, int] | None:
    """(resource name, count) for the device plugin, or None for a CPU-only service."""
    accel = accelerator(sp)
    if accel == "cpu":
        return None
    return GPU_RESOURCE[gpu_vendor(sp)], engines.get(sp.engine).gpu_count(sp)


def gpu_vendor(sp: ServicePlan) -> str:
    """The vendor of the discrete GPUs a GPU service runs on (its device plugin's resource, GPU_RESOURCE)."""
    return next(g.vendor for g in sp.gpus if not g.unified)


# ---------------------------------------------------------------------------------------------- documents


def _image(sp: ServicePlan):
    image = engines.get(sp.engine).container
    assert image is not None  # manifests() refused the engines without an image
    return image


def _pvc(sp: ServicePlan, name: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{name}-models", "labels": dict(labels)},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": f"{pvc_gib(sp.memory.weights_bytes)}Gi"}}}}


def _service(sp: ServicePlan, name: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"type": "ClusterIP", "selector": _selector(labels),
                     "ports": [{"name": "http", "port": sp.port, "targetPort": "http", "protocol": "TCP"}]}}


def _modelfile_config_map(plan: Plan, sp: ServicePlan, ctx: RenderContext, name: str, labels: dict) -> dict:
    """Ollama's tuned model (num_ctx, num_gpu, ...) comes from a Modelfile, mounted at /stackgen/Modelfile."""
    local = _local_name(sp)
    ref = f"{MODELS_MOUNT}/{local}" if local else sp.model_ref
    text = render_modelfile(sp, ctx, ref, Path(plan.stack_path).parent)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-modelfile", "labels": dict(labels)},
            "data": {"Modelfile": text}}


TEMPLATE_KEY = "chat-template.jinja"  # the ConfigMap's key, mounted under TEMPLATE_MOUNT


def _chat_template(sp: ServicePlan) -> str | None:
    """Where the engine reads the service's chat template file in the pod (a ConfigMap), None without one."""
    return f"{TEMPLATE_MOUNT}/{TEMPLATE_KEY}" if chat_template_file(sp) else None


def _chat_template_config_map(plan: Plan, sp: ServicePlan, name: str, labels: dict) -> dict:
    """The stack's chat template file (services.<name>.chat_template), mounted read-only at /stackgen-template."""
    text = read_chat_template(sp, Path(plan.stack_path).parent)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-chat-template", "labels": dict(labels)}, "data": {TEMPLATE_KEY: text}}


def _network_policy(plan: Plan, name: str, labels: dict) -> dict:
    """serve.host on loopback means "nobody else": in a cluster, only the stack's own pods may connect."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"podSelector": {"matchLabels": _selector(labels)}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {
                         "app.kubernetes.io/part-of": plan.stack_name}}}]}]}}


def _deployment(plan: Plan, sp: ServicePlan, name: str, labels: dict) -> dict:
    pod = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [_container(plan, sp)],
        "volumes": _volumes(sp, name),
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": _selector(labels)},
                     "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}}


def _container(plan: Plan, sp: ServicePlan) -> dict:
    port = engines.get(sp.engine).default_port
    inside = replace(sp, host="0.0.0.0", port=port)
    if sp.memory.unpinned_utilization is not None:  # the device plugin picks the GPU: the share planned for any of them
        inside = replace(inside, memory=replace(sp.memory, gpu_memory_utilization=sp.memory.unpinned_utilization))
    c: dict = {"name": "engine", "image": image_for(sp, accelerator(sp)), "imagePullPolicy": "IfNotPresent"}
    c["args"] = [escape_k8s(a) for a in _args(inside)]
    c["env"] = _env(plan, inside)
    c["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    c.update(_probes(sp))
    c["resources"] = _resources(sp)
    c["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": not _image(sp).shared_memory, "runAsNonRoot": True}
    c["volumeMounts"] = _mounts(sp)
    return c


def escape_k8s(value: str) -> str:
    """The kubelet expands `$(VAR)` in args, command and env values, and reduces `$$` to `$`
    (kubernetes third_party/forked/golang/expansion): an alias `$(LLAMA_API_KEY)` would put the key in argv."""
    return value.replace("$", "$$")


def _local_name(sp: ServicePlan) -> str | None:
    """The file or folder name of local weights (copied into the PVC), or None for a registry reference. The path
    is one of this machine's paths: on Linux or macOS a backslash is part of a file name, not a separator."""
    if sp.model.path:  # the name the stack wrote, not a symlink's target (render/paths.local_weights)
        return PurePosixPath(local_weights(sp) or "").name
    if sp.model_ref.startswith("models/"):  # no registry source: the stack expects the file under models/
        return sp.model_ref.removeprefix("models/")
    return None


def _args(inside: ServicePlan) -> list[str]:
    """The engine's argv without the image's entrypoint (llama.cpp: /app/llama-server, Ollama: /bin/ollama)."""
    engine = engines.get(inside.engine)
    local = _local_name(inside)
    ref = f"{MODELS_MOUNT}/{local}" if local else inside.model_ref
    argv = engine.argv(inside, LaunchContext(binary=engine.binary, model_ref=ref, host="0.0.0.0", port=inside.port,
                                             chat_template=_chat_template(inside)))
    return argv[_image(inside).entrypoint_args:]  # what the image's entrypoint already runs


def _env(plan: Plan, inside: ServicePlan) -> list[dict]:
    env = dict(engines.get(inside.engine).env(inside))
    env.update(device_order(inside))  # the GPUs the device plugin gives, numbered in the host's order
    env["HOME"] = HOME_MOUNT
    env.update({k: v.format(models=MODELS_MOUNT) for k, v in _image(inside).pod_env})  # caches on the PVC
    for key, value in env.items():
        if any(ch in value for ch in "\r\n\x00"):
            raise RenderError(f"services.{inside.name}: environment value of {key} contains a line break or NUL")
    out = [{"name": k, "value": escape_k8s(env[k])} for k in sorted(env)]
    key_env = engine_key_env(inside)
    if key_env:
        out.append({"name": key_env, "valueFrom": {"secretKeyRef": {
            "name": secret_name(plan, inside), "key": "api-key", "optional": False}}})
    if hub_fetched(inside):  # optional: a public repo needs no token, and the pod starts without the Secret
        out.append({"name": HF_TOKEN, "valueFrom": {"secretKeyRef": {
            "name": hf_token_secret(plan), "key": "token", "optional": True}}})
    return out


def _probes(sp: ServicePlan) -> dict:
    get = {"path": engines.get(sp.engine).readiness.path or "/health", "port": "http"}
    return {
        # failureThreshold x periodSeconds = the plan's start-up budget: the load time, then liveness takes over.
        "startupProbe": {"httpGet": dict(get), "periodSeconds": STARTUP_PERIOD_S, "timeoutSeconds": 5,
                         "failureThreshold": startup_failure_threshold(sp)},
        "readinessProbe": {"httpGet": dict(get), "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": dict(get), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
    }


def _resources(sp: ServicePlan) -> dict:
    request, limit = memory_mib(sp)
    res = {"requests": {"cpu": str(max(1, sp.threads)), "memory": f"{request}Mi"},
           "limits": {"memory": f"{limit}Mi"}}
    gpu = gpu_request(sp)
    if gpu:
        res["requests"][gpu[0]] = gpu[1]
        res["limits"][gpu[0]] = gpu[1]
    return res


def _mounts(sp: ServicePlan) -> list[dict]:
    mounts = [{"name": "models", "mountPath": MODELS_MOUNT}, {"name": "home", "mountPath": HOME_MOUNT},
              {"name": "tmp", "mountPath": "/tmp"}]
    if _image(sp).shared_memory:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if engines.get(sp.engine).model_tag(sp) is not None:
        mounts.append({"name": "modelfile", "mountPath": "/stackgen", "readOnly": True})
    if _chat_template(sp):
        mounts.append({"name": "chat-template", "mountPath": TEMPLATE_MOUNT, "readOnly": True})
    return mounts


def _volumes(sp: ServicePlan, name: str) -> list[dict]:
    vols: list[dict] = [{"name": "models", "persistentVolumeClaim": {"claimName": f"{name}-models"}},
            {"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    if _image(sp).shared_memory:
        # PyTorch needs shared memory (docs/deployment/k8s.md; production-stack `shmSize`).
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_mib(sp)}Mi"}})
    if engines.get(sp.engine).model_tag(sp) is not None:
        vols.append({"name": "modelfile", "configMap": {"name": f"{name}-modelfile"}})
    if _chat_template(sp):
        vols.append({"name": "chat-template", "configMap": {"name": f"{name}-chat-template"}})
    return vols


def _fleet(sp: ServicePlan, docs: list[dict], name: str, labels: dict) -> None:
    """Replicas (stackgen/render/targets/fleet.py): one pod per separate instance, the weights PVC shared by them
    (ReadWriteMany), rolling updates one pod at a time, scrape annotations and a HorizontalPodAutoscaler."""
    pvc, _, deploy = docs[:3]
    pods = fleet.pods(sp)
    spec = deploy["spec"]
    spec["replicas"] = pods
    hpa = fleet.autoscaler(sp, name, labels)
    if pods > 1 or hpa is not None:  # pods on several nodes: shared weights, one pod replaced at a time
        pvc["spec"]["accessModes"] = ["ReadWriteMany"]
        spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    notes = fleet.scrape_annotations(sp, engines.get(sp.engine).default_port)
    if notes:
        spec["template"]["metadata"]["annotations"] = notes
    if hpa is not None:
        docs.insert(3, hpa)


# ---------------------------------------------------------------------------------------------- multi-node

LWS_API = "leaderworkerset.x-k8s.io/v1"
LEADER_SCRIPT = (
    'ray start --head --port={port} --node-ip-address="$VLLM_HOST_IP"\n'
    '# Wait until every pod of the group has joined the Ray cluster, then serve.\n'
    'until [ "$(ray status 2>/dev/null | grep -c \' node_\')" -ge "$LWS_GROUP_SIZE" ]; do sleep 5; done\n'
    'exec vllm serve "$@"\n')
WORKER_SCRIPT = 'exec ray start --address="$LWS_LEADER_ADDRESS:{port}" --node-ip-address="$VLLM_HOST_IP" --block\n'


def _multinode_manifests(plan: Plan, sp: ServicePlan, name: str, labels: dict) -> list[dict]:
    """vLLM over several nodes: one LeaderWorkerSet group of PP pods (leader = Ray head + `vllm serve`, workers =
    Ray workers), each pod TP GPUs; a Service on the leader. The weights go to a per-pod emptyDir (a ReadWriteOnce
    PVC cannot follow pods onto several nodes)."""
    from stackgen.plan.plan import RAY_PORT
    if sp.topology.kind != "vllm-ray":
        raise RenderError(f"services.{sp.name}: the kubernetes target renders multi-node vLLM (LeaderWorkerSet); "
                          "llama.cpp RPC workers are rendered by the script and systemd targets")
    leader_labels = dict(labels, role="leader")
    leader = _lws_pod(plan, sp, name, "leader", LEADER_SCRIPT.format(port=RAY_PORT))
    worker = _lws_pod(plan, sp, name, "worker", WORKER_SCRIPT.format(port=RAY_PORT))
    lws = {"apiVersion": LWS_API, "kind": "LeaderWorkerSet", "metadata": {"name": name, "labels": dict(labels)},
           "spec": {"replicas": 1, "startupPolicy": "LeaderCreated",
                    "leaderWorkerTemplate": {
                        "size": sp.memory.pipeline_parallel, "restartPolicy": "RecreateGroupOnPodRestart",
                        "leaderTemplate": {"metadata": {"labels": leader_labels}, "spec": leader},
                        "workerTemplate": {"metadata": {"labels": dict(labels)}, "spec": worker}}}}
    svc = _service(sp, name, labels)
    svc["spec"]["selector"] = dict(_selector(labels), role="leader")
    docs = [svc, lws]
    if sp.host in LOOPBACK_HOSTS:
        docs.append(_network_policy(plan, name, labels))
    return docs


def _lws_pod(plan: Plan, sp: ServicePlan, name: str, role: str, script: str) -> dict:
    c = _container(plan, sp)
    c["command"] = ["/bin/sh", "-c", script] + ([engines.get(sp.engine).binary] if role == "leader" else [])
    if role == "worker":
        del c["args"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            del c[probe]
        del c["ports"]
        c["env"] = [e for e in c["env"] if e["name"] != engine_key_env(sp)]
    c["env"] = c["env"] + [{"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    vols = [v for v in _volumes(sp, name) if v["name"] != "models"]
    vols.insert(0, {"name": "models", "emptyDir": {"sizeLimit": f"{pvc_gib(sp.memory.weights_bytes)}Gi"}})
    return {"automountServiceAccountToken": False, "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
            # `ray start` drains for up to 30 s after SIGTERM (Ray 2.60) before it stops its processes.
            "terminationGracePeriodSeconds": 45, "containers": [c], "volumes": vols}


def pod_templates(doc: dict) -> list[dict]:
    """The pod templates of a LeaderWorkerSet as core v1 Pods (kubernetes-validate has no schema for the CRD)."""
    t = doc["spec"]["leaderWorkerTemplate"]
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": dict(t[k]["metadata"], name=f"{doc['metadata']['name']}-{k}"),
             "spec": t[k]["spec"]} for k in ("leaderTemplate", "workerTemplate")]


# ---------------------------------------------------------------------------------------------- header


def _header(plan: Plan, sp: ServicePlan, ctx: RenderContext, shared: dict[str, SharedGPUs] | None = None) -> str:
    name = resource_name(plan, sp)
    lines = [ctx.header().rstrip("\n"), f"# Stack {plan.stack_name}, service {sp.name}: `kubectl apply -f "
             f"{K8S_DIR}/{sp.name}.yaml`."]
    local = _local_name(sp)
    if sp.topology is not None:
        lines.append(f"# Multi-node: needs the LeaderWorkerSet controller (sigs.k8s.io/lws). One group of "
                     f"{sp.memory.pipeline_parallel} pods x {sp.memory.tensor_parallel} GPUs: tensor parallel inside a "
                     "pod, pipeline parallel across pods over Ray.")
        lines.append("# Each pod downloads the weights into its own emptyDir; the pods' network must carry the "
                     "pipeline activations (25 GbE+ or InfiniBand).")
    elif local:  # every part of a split GGUF: llama.cpp opens the others beside the first (paths.py)
        files = ", ".join(f"{MODELS_MOUNT}/{f}" for f in weight_files(local))
        lines.append(f"# Copy the weights into the PVC {name}-models as {files} before the pod can become ready.")
    engine = engines.get(sp.engine)
    if engine_key_env(sp):
        # Piped from the shell's own printf, so the key is in no process's argv (`--from-literal=api-key="$KEY"`
        # put it in kubectl's, readable by every local user in ps and /proc: audit a2 #15).
        lines.append(f"# API key: printf '%s' \"${sp.api_key_env}\" | kubectl create secret generic "
                     f"{secret_name(plan, sp)} --from-file=api-key=/dev/stdin (the value is never written here).")
        if key_value_note(sp):
            lines.append(f"# {key_value_note(sp)[0].upper()}{key_value_note(sp)[1:]}.")
    elif sp.api_key_env:
        lines.append(f"# {sp.name}: {engine.short} has no API key setting; keep the Service internal or put an "
                     "authenticating proxy in front.")
    if hub_fetched(sp):
        lines.append(f"# {hub_token_note(sp)} (optional Secret, never written here):")
        lines.append(f"#   printf '%s' \"${HF_TOKEN}\" | kubectl create secret generic {hf_token_secret(plan)} "
                     "--from-file=token=/dev/stdin")
    tag = engine.model_tag(sp)
    if tag is not None:
        lines.append(f"# After the pod is ready, create the tuned model once: kubectl exec deploy/{name} -- "
                     f"ollama create {tag} -f /stackgen/Modelfile")
    if any(g.vendor == "apple" for g in sp.gpus):
        lines.append("# Containers cannot use Metal: this service runs on the CPU in the cluster.")
    if sp.replicas > 1:
        lines += fleet.kubernetes_header(sp)
    for vendor, sh in (shared or {}).items():
        if sp.name not in sh.services:
            continue
        others = ", ".join(n for n in sh.services if n != sp.name)
        lines.append(f"# The plan puts this service on the same GPU(s) as {others}: their pods request "
                     f"{sh.requested} {GPU_RESOURCE[vendor]} where the node has {sh.available}.")
        if vendor == "nvidia":
            lines.append(f"# Enable time-slicing first ({K8S_DIR}/gpu-time-slicing.yaml) or the pods past the "
                         "node's GPUs stay Pending.")
        else:
            lines.append(f"# The {GPU_RESOURCE[vendor]} device plugin grants whole GPUs: the pods past the node's "
                         "GPUs stay Pending; give each service its own GPU or use the compose or systemd target.")
    return "\n".join(lines) + "\n"
