"""stackgen's GPU indices are the host's (nvidia-smi's, the profile's: PCI bus order), but CUDA numbers GPUs
FASTEST_FIRST unless CUDA_DEVICE_ORDER=PCI_BUS_ID (NVIDIA, CUDA environment variables), and both
CUDA_VISIBLE_DEVICES and llama.cpp's -ts count in CUDA's order. On an RTX 3060 (bus 01) + RTX 4090 (bus 02),
CUDA_VISIBLE_DEVICES=1 meant the 3060, and -ts 12,24 gave the 3060 the 4090's share. Every artifact that pins GPUs
now sets the order beside the pin, and a process over several GPUs gets the order alone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stackgen import engines
from stackgen.engines.base import visible_devices
from stackgen.render.artifact import RenderContext, render_plan
from tools.stacks import plan_for

G3060 = ("{vendor: nvidia, name: GeForce RTX 3060, memory_gib: 12, bandwidth_gbs: 360, tier: consumer, "
         "interconnect_gbs: 32}")
G4090 = ("{vendor: nvidia, name: GeForce RTX 4090, memory_gib: 24, bandwidth_gbs: 1008, tier: consumer, "
         "interconnect_gbs: 32}")
HW = ("{gpus: [" + G3060 + ", " + G4090 + "], memory_gib: 64, memory_bandwidth_gbs: 51.2, "
      "cpu: {cores: 16, threads: 32, arch: x86_64}}")
STACK = ("version: 1\nname: mixed\nhardware: " + HW + "\nworkload: {concurrent_users: 2, context_tokens: 8192}\n"
         "services:\n")
TARGETS = ["script", "systemd", "compose", "quadlet", "kubernetes"]
PINNED = STACK + "  small: {model: qwen2.5-0.5b-instruct, engine: vllm}\n"
SPLIT = STACK + "  big: {model: qwen2.5-32b-instruct, engine: llama.cpp, quant: Q4_K_M}\n"
ORDER = "CUDA_DEVICE_ORDER=PCI_BUS_ID"


def artifacts(plan) -> dict[str, str]:
    return {a.path: a.content for a in render_plan(plan, RenderContext("stack.yaml"), TARGETS)}


def test_every_artifact_that_pins_a_gpu_sets_cuda_device_order(tmp_path):
    plan = plan_for(tmp_path, PINNED)
    sp = plan.services[0]
    assert sp.gpu_ids == (1,)  # the 4090 in the host's order
    assert sp.env["CUDA_VISIBLE_DEVICES"] == "1" and sp.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    cmd = engines.command(engines.get(sp.engine), sp, "vllm", sp.model_ref, sp.host, sp.port)  # `stackgen up`
    assert cmd.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    pinned = {path: text for path, text in artifacts(plan).items() if "CUDA_VISIBLE_DEVICES" in text}
    assert set(pinned) >= {"small/small.env", "systemd/stackgen-mixed-small.service"}
    for path, text in pinned.items():
        assert ORDER in text, path


def test_one_llama_server_over_mixed_gpus_counts_its_tensor_split_in_bus_order(tmp_path):
    plan = plan_for(tmp_path, SPLIT)
    sp = plan.services[0]
    assert sp.gpu_ids == () and "-ts" in sp.command and sp.command[sp.command.index("-ts") + 1] == "12,24"
    assert sp.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    arts = artifacts(plan)
    assert ORDER in arts["big/big.env"] and f'Environment="{ORDER}"' in arts["systemd/stackgen-mixed-big.service"]
    # inside a container the runtime numbers the GPUs it was given again, by its own order
    assert ORDER in arts["compose/big.env"]
    assert "name: CUDA_DEVICE_ORDER\n          value: PCI_BUS_ID" in arts["kubernetes/big.yaml"]


def _plan(vendor: str, ids: tuple[int, ...], count: int = 2):
    gpu = SimpleNamespace(vendor=vendor, unified=False, count=count)
    return SimpleNamespace(gpus=(gpu,), gpu_ids=ids, memory=SimpleNamespace(gpu_bytes=1))


@pytest.mark.parametrize("vendor, want", [
    ("nvidia", {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}),
    # Level Zero numbers devices in the driver's order unless asked for the bus order (compute-runtime
    # sortNeoDevices); ZE_AFFINITY_MASK counts in it
    ("intel", {"ZE_ENABLE_PCI_ID_DEVICE_ORDER": "1", "ZE_AFFINITY_MASK": "0,1"}),
    # ROCm has no order variable: ROCR_VISIBLE_DEVICES counts in the kernel's order, not sorted by speed
    ("amd", {"ROCR_VISIBLE_DEVICES": "0,1"}),
])
def test_each_runtime_gets_its_bus_order_beside_its_pin(vendor, want):
    assert visible_devices(_plan(vendor, (0, 1))) == want


def test_no_order_for_one_gpu_or_a_cpu_process():
    assert visible_devices(_plan("nvidia", (), count=1)) == {}
    cpu = _plan("nvidia", ())
    cpu.memory.gpu_bytes = 0
    assert visible_devices(cpu) == {}
