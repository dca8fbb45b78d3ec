"""The plan: what stackgen decided for each service, and why. Produced by resolve(), consumed by render and up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stackgen.memory import MemoryPlan
from stackgen.models import ModelFacts
from stackgen.spec import GPUSpec, HardwareSpec, ServiceSpec, WorkloadSpec


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
    gpus: tuple[GPUSpec, ...] = ()
    model_ref: str = ""

    def to_json(self) -> dict[str, Any]:
        m = self.memory
        return {
            "name": self.name,
            "engine": self.engine,
            "fits": m.fits,
            "model": {"name": self.model.name, "source": self.model.source, "architecture": self.model.architecture,
                      "format": m.weights_format, "path": self.model.path},
            "memory": {
                "weights_bytes": m.weights_bytes, "kv_cache_bytes": m.kv_cache_bytes,
                "compute_bytes": m.compute_bytes, "overhead_bytes": m.overhead_bytes, "total_bytes": m.total_bytes,
                "gpu_bytes": m.gpu_bytes, "host_bytes": m.host_bytes, "gpu_budget_bytes": m.gpu_budget_bytes,
                "host_budget_bytes": m.host_budget_bytes, "kv_cache_type": m.kv_cache_type,
                "weights_source": m.weights_source,
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
