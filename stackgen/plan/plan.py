"""The plan: what stackgen decided for each service, and why. Produced by resolve(), consumed by render and up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stackgen import engines
from stackgen.plan.memory import MemoryPlan
from stackgen.models.facts import ModelFacts
from stackgen.spec.stack import GPUSpec, HardwareSpec, ServiceSpec, TLSSpec, WorkloadSpec

if TYPE_CHECKING:
    from stackgen.plan.speed import Forecast
    from stackgen.plan.capacity import Capacity


RAY_PORT = 6379  # ray start --head default GCS port
RPC_PORT = 50052  # ggml-rpc-server default port


# The one start-up budget (issue 14.2): how long a service may take from start to answering, read by `up` (the wait
# for ready; `status` calls a service still loading within it "loading"), the systemd and quadlet TimeoutStartSec,
# the compose healthcheck start_period, the kubernetes startupProbe and llama-swap's healthCheckTimeout.
STARTUP_BASE_S = 60  # process start, driver/runtime init, the first probes
LOAD_BYTES_PER_S = 100_000_000  # reading the weights: below a network volume's baseline (AWS EBS gp3: 125 MiB/s)
DOWNLOAD_BYTES_PER_S = 25_000_000  # weights fetched at start (-hf, the HF hub, ollama pull): a 200 Mbit/s link
STARTUP_STEP_S = 10  # budgets are whole multiples of 10 s (the same bytes for a few bytes' change of size)


def startup_budget_s(weights_bytes: int, extra_s: float = 0.0, fetched: bool = False) -> int:
    """Base + the weights read at LOAD_BYTES_PER_S (+ downloaded first when `fetched`) + the engine's own start-up
    (Engine.startup_extra_s: vLLM's compile and profiling), rounded up to 10 s."""
    s = STARTUP_BASE_S + weights_bytes / LOAD_BYTES_PER_S + extra_s
    if fetched:
        s += weights_bytes / DOWNLOAD_BYTES_PER_S
    return int(math.ceil(s / STARTUP_STEP_S) * STARTUP_STEP_S)


@dataclass(frozen=True)
class NodeRole:
    """What one machine of a multi-node service runs."""

    index: int
    address: str
    role: str  # "head" | "worker"
    layers: int
    label: str
    gpus: int
    vendors: tuple[str, ...] = ()  # GPU vendors of this machine (device access of its units)


@dataclass(frozen=True)
class Topology:
    """How a service is split over several machines: `vllm-ray` (TP in a node, PP across nodes, Ray) or
    `llama-rpc` (llama-server on the head, ggml-rpc-server on the others)."""

    kind: str
    nodes: tuple[NodeRole, ...]
    network: tuple[str, ...]  # what the network between nodes carries, and what it must be

    @property
    def head(self) -> NodeRole:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[NodeRole, ...]:
        return self.nodes[1:]

    def rpc_endpoints(self) -> list[str]:
        return [f"{w.address}:{RPC_PORT}" for w in self.workers]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "network": list(self.network),
                "nodes": [{"index": n.index, "address": n.address, "role": n.role, "layers": n.layers,
                           "hardware": n.label, "gpus": n.gpus} for n in self.nodes]}


@dataclass(frozen=True)
class ServicePlan:
    name: str
    engine: str
    spec: ServiceSpec
    model: ModelFacts
    workload: WorkloadSpec
    memory: MemoryPlan
    host: str
    port: int
    threads: int
    predicted_decode_tokens_per_s: float
    bottleneck: str
    reasons: tuple[str, ...]
    rejected: dict[str, str]
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    api_key_env: str | None = None
    cors_origins: tuple[str, ...] = ()
    gpus: tuple[GPUSpec, ...] = ()
    model_ref: str = ""
    topology: Topology | None = None  # None: one machine
    tls: TLSSpec | None = None  # serve.tls: the engine serves HTTPS
    capacity: Capacity | None = None  # replicas and predicted latency at the workload's concurrency (capacity.py)
    # Decode per user and TTFT at the workload's concurrency from the per-backend model (stackgen/plan/speed.py), with
    # its stated error; predicted_decode_tokens_per_s above stays the single-stream bandwidth roofline.
    speed: Forecast | None = None
    # The host's `stackgen calibrate` engine point the plan's speed used (host.calibration.EnginePoint; None: none),
    # so that forecast_at at other user counts uses it too.
    calibration: Any = None
    # The build the plan is for on the speed fit's build axis: llama.cpp's build (Pins.engine_build, for engines that
    # plan by build), vLLM's version encoded by speed.vllm_build (Engine.speed_build: 0.33.0 -> 3300); None: unknown
    # or an engine without an era. forecast_at and capacity.service_curve pick the same build era of the speed fit as
    # the plan's speed (speed.backend_params).
    engine_build: int | None = None
    # `stackgen up` runs a fleet (capacity.separate) as several processes, each under its own name
    # (stackgen.run.fleet): `unit_of` is the stack service a process belongs to and serves as ('' when the service
    # runs as one process), `unit_role` "instance" (`<svc>-N`) or "balancer" (`<svc>`, HAProxy at its host:port).
    unit_of: str = ""
    unit_role: str = ""
    # The host GPUs (indices in the order hardware lists them) this service's processes run on, placed by
    # capacity.place_gpus after the services before it: separate instances take `gpu_count` each, in instance order.
    # () = not pinned: every GPU of the machine (or none). Native starts pin them (engines.base.visible_devices),
    # containers name them (compose device_ids).
    gpu_ids: tuple[int, ...] = ()

    def gpu_sets(self) -> list[tuple[int, ...]]:
        """The GPU indices of each engine process: one set per separate instance, else one (empty: not pinned)."""
        if not self.gpu_ids:
            return []
        cap = self.capacity
        if cap is None or not cap.separate:
            return [self.gpu_ids]
        k = len(self.gpu_ids) // cap.replicas
        return [self.gpu_ids[i * k:(i + 1) * k] for i in range(cap.replicas)]

    @property
    def fetches_weights(self) -> bool:
        """The engine downloads the weights at start (a registry reference), not a local file."""
        return not self.model.path and not self.model_ref.startswith("models/")

    @property
    def startup_budget_s(self) -> int:
        """The one start-up budget every way of running the service uses (see startup_budget_s())."""
        return startup_budget_s(self.memory.weights_bytes, engines.get(self.engine).startup_extra_s,
                                self.fetches_weights)

    @property
    def replicas(self) -> int:
        return self.capacity.replicas if self.capacity is not None else 1

    def to_json(self) -> dict[str, Any]:
        out = self._to_json()
        if self.topology is not None or self.memory.pipeline_parallel > 1:
            out["pipeline_parallel"] = self.memory.pipeline_parallel
        if self.memory.data_parallel > 1:
            out["data_parallel"] = self.memory.data_parallel
        if self.topology is not None:  # single-node JSON stays as it was unless a knob above is pinned
            out["topology"] = self.topology.to_json()
        if self.speed is not None:
            out["speed"] = self.speed.to_json()
        if self.gpu_ids:
            out["gpu_ids"] = list(self.gpu_ids)
        if self.capacity is not None:
            out["replicas"] = self.capacity.replicas
            out["capacity"] = self.capacity.to_json()
        return out

    def _to_json(self) -> dict[str, Any]:
        m = self.memory
        return {
            "name": self.name,
            "engine": self.engine,
            "fits": m.fits,
            "model": {"name": self.model.name, "source": self.model.source, "architecture": self.model.architecture,
                      "format": m.weights_format, "path": self.model.path,
                      **({"ref": self.model.ref} if self.model.ref else {})},
            "memory": {
                "weights_bytes": m.weights_bytes, "kv_cache_bytes": m.kv_cache_bytes,
                "compute_bytes": m.compute_bytes, "overhead_bytes": m.overhead_bytes, "total_bytes": m.total_bytes,
                "gpu_bytes": m.gpu_bytes, "host_bytes": m.host_bytes, "gpu_budget_bytes": m.gpu_budget_bytes,
                "host_budget_bytes": m.host_budget_bytes, "kv_cache_type": m.kv_cache_type,
                "weights_source": m.weights_source, "prompt_cache_bytes": m.prompt_cache_bytes,
                **_kv_pool(self),
            },
            "gpu_layers": m.gpu_layers,
            "total_layers": m.total_layers,
            "tensor_parallel": m.tensor_parallel,
            "parallel": m.parallel,
            "context_per_request": m.context_per_request,
            "predicted_decode_tokens_per_s": self.predicted_decode_tokens_per_s,
            "bottleneck": self.bottleneck,
            "host": self.host,
            "port": self.port,
            "command": list(self.command),
            "env": dict(sorted(self.env.items())),
            "levers": list(m.levers),
            "reasons": list(self.reasons),
            "rejected": dict(sorted(self.rejected.items())),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Plan:
    stack_name: str
    stack_path: str
    hardware: HardwareSpec
    hardware_label: str
    services: tuple[ServicePlan, ...]

    def service(self, name: str) -> ServicePlan:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack_name,
            "file": self.stack_path,
            "hardware": {"label": self.hardware_label, **self.hardware.model_dump(mode="json", exclude_none=True)},
            "services": [s.to_json() for s in self.services],
        }


def _kv_pool(sp) -> dict[str, int]:
    """For an engine that pages its KV cache (vLLM): the pool it allocates (capacity.kv_pool_bytes; kv_cache_bytes
    stays what every request at full context needs) and the total the printed table shows (what it reserves on the
    GPU; total_bytes counted the demand instead, smaller or larger than gpu_bytes)."""
    from stackgen.plan.capacity import kv_pool_bytes, planned_total_bytes

    pool = kv_pool_bytes(sp.engine, sp.memory)
    return {} if pool is None else {"kv_pool_bytes": pool, "total_bytes": planned_total_bytes(sp.engine, sp.memory)}
