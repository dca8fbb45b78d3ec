"""The decision table, cell by cell: every hardware class x single/multi user x optimize goal, against an
expectation written out here independently of stackgen/plan/resolve.py (the seed article's matrix: Ollama solves setup
friction, vLLM concurrent users on CUDA, llama.cpp portability and single-stream control, MLX unified memory).
Editing a row of the table, or the order of its engines, fails a test here."""

from __future__ import annotations

import itertools

import pytest

from stackgen.plan import resolve
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec

HW = ("apple", "cuda-rocm", "amd-consumer", "intel", "cpu")
OPT = ("latency", "throughput", "setup")

# row id -> (hardware classes, users, optimize goals, engines in preference order, least prompt/output ratio)
ROWS = {
    "mac-setup": ({"apple"}, "single", {"setup"}, ("ollama", "mlx", "llama.cpp")),
    "mac-dev-loop": ({"apple"}, "single", {"latency", "throughput"}, ("mlx", "llama.cpp", "ollama")),
    "mac-multi-user": ({"apple"}, "multi", set(OPT), ("llama.cpp", "mlx", "ollama")),
    # long shared prompts (prompt >= 8 x output) for many users on CUDA: SGLang's RadixAttention (merged from sglang)
    "gpu-prefix-heavy": ({"cuda-rocm"}, "multi", {"latency", "throughput"}, ("sglang", "vllm", "llama.cpp", "ollama"),
                         8.0),
    "gpu-multi-user": ({"cuda-rocm"}, "multi", set(OPT), ("vllm", "llama.cpp", "ollama")),
    "setup": ({"cuda-rocm", "amd-consumer", "intel", "cpu"}, "single", {"setup"}, ("ollama", "llama.cpp", "vllm")),
    "gpu-single-user": ({"cuda-rocm"}, "single", {"latency", "throughput"}, ("llama.cpp", "ollama", "vllm")),
    "portable": ({"amd-consumer", "intel", "cpu"}, "any", set(OPT), ("llama.cpp", "ollama", "vllm")),
    "fallback": (set(HW), "any", set(OPT), ("llama.cpp", "ollama", "vllm", "mlx")),
}


def expected_row(hw: str, users: str, optimize: str, ratio: float = 0.0) -> str:
    if hw == "apple":
        if users == "multi":
            return "mac-multi-user"
        return "mac-setup" if optimize == "setup" else "mac-dev-loop"
    if optimize == "setup" and users == "single":
        return "setup"
    if hw == "cuda-rocm":
        if users == "multi" and optimize != "setup" and ratio >= 8:
            return "gpu-prefix-heavy"
        return "gpu-multi-user" if users == "multi" else "gpu-single-user"
    return "portable"


CELLS = list(itertools.product(HW, ("single", "multi"), OPT, (0.0, 7.99, 8.0, 20.0)))


@pytest.mark.parametrize("hw,users,optimize,ratio", CELLS)
def test_every_cell_picks_the_expected_row(hw, users, optimize, ratio):
    want = expected_row(hw, users, optimize, ratio)
    for n in ((1,) if users == "single" else (2, 64)):
        row = resolve.pick_row(hw, n, optimize, ratio)
        assert row.id == want
        assert row.engines == ROWS[want][3]
    if ratio == 0.0:
        assert resolve.pick_row(hw, 1 if users == "single" else 2, optimize).id == want  # the default ratio is 0


@pytest.mark.parametrize("row", resolve.DECISION_TABLE, ids=lambda r: r.id)
def test_each_row_is_as_written(row):
    hardware, users, optimize, engines, *ratio = ROWS[row.id]
    assert (set(row.hardware), row.users, set(row.optimize), row.engines, row.min_prompt_ratio) == (
        hardware, users, optimize, engines, (ratio or [0.0])[0])


def test_the_table_has_exactly_these_rows_in_this_order():
    assert [r.id for r in resolve.DECISION_TABLE] == list(ROWS)


def test_every_row_but_the_fallback_is_reached_and_the_fallback_answers_an_unknown_class():
    reached = {expected_row(*c) for c in CELLS}
    assert reached == set(ROWS) - {"fallback"}
    assert resolve.pick_row("quantum", 1, "latency").id == "fallback"


def gpu(vendor: str, tier: str = "consumer", name: str = "G") -> GPUSpec:
    return GPUSpec(vendor=vendor, name=name, memory_gib=16, bandwidth_gbs=500, tier=tier,
                   unified=vendor == "apple")


@pytest.mark.parametrize("gpus,cls", [
    ((), "cpu"),
    ((gpu("apple"),), "apple"),
    ((gpu("nvidia"),), "cuda-rocm"),
    ((gpu("amd", "datacenter"),), "cuda-rocm"),  # Instinct: ROCm builds of vLLM
    ((gpu("amd"),), "amd-consumer"),
    ((gpu("amd", "workstation"),), "amd-consumer"),
    ((gpu("intel"),), "intel"),
    ((gpu("intel"), gpu("nvidia")), "cuda-rocm"),
    ((gpu("intel"), gpu("amd")), "amd-consumer"),
])
def test_hardware_class(gpus, cls):
    hw = HardwareSpec(gpus=gpus, memory_gib=32, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))
    assert resolve.hardware_class(hw) == cls


def test_row_text_fills_the_facts():
    hw = HardwareSpec(gpus=(gpu("nvidia", name="RTX"),), memory_gib=32, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))
    row = next(r for r in resolve.DECISION_TABLE if r.id == "portable")
    assert row.text(hw, 3) == ("3 concurrent users on a consumer NVIDIA GPU (RTX): llama.cpp's GGUF quantization and "
                               "its CUDA backends cover hardware Python engines ignore")
