"""stackgen.host.detect: recorded driver outputs parsed into profiles, the live CPU/RAM probe, and probes that fail or
hang without breaking detection. Fixtures and their public sources: tests/fixtures/detect/SOURCE.md."""

from __future__ import annotations

import json
import os
import platform
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from stackgen.host.detect import (
    NVIDIA_SMI_CMD,
    ROCM_SMI_CMD,
    SYSTEM_PROFILER_CMD,
    ProbeEnv,
    apple_bandwidth,
    apple_bandwidth_share,
    apple_chip,
    detect_host,
    known_gpu,
    measure_memory_bandwidth,
    parse_nvidia_smi_csv,
    parse_rocm_smi_json,
    parse_sysctl_value,
    parse_system_profiler_displays,
    probe_amd,
    probe_apple,
    probe_cpu_ram,
    probe_nvidia,
)
from stackgen.host.facts import HostFacts
from stackgen.spec.stack import HardwareSpec

FIX = Path(__file__).parent.parent / "fixtures" / "detect"
GIB = 2**30


def fixture(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


class FakeHost:
    """A recorded machine: command -> (rc, stdout, stderr), path -> text, globbable paths."""

    def __init__(self, commands: dict[tuple[str, ...], tuple[int, str, str]] | None = None,
                 files: dict[str, str] | None = None, paths: Sequence[str] = ()):
        self.commands = commands or {}
        self.files = files or {}
        self.paths = list(paths) + list(self.files)
        self.calls: list[tuple[str, ...]] = []

    def run(self, cmd, timeout):
        self.calls.append(tuple(cmd))
        rc, out, err = self.commands[tuple(cmd)]
        return subprocess.CompletedProcess(list(cmd), rc, out, err)

    def read(self, path):
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def glob(self, pattern):
        import fnmatch

        return sorted({p for p in self.paths if fnmatch.fnmatch(p, pattern)})

    def which(self, prog):
        return f"/usr/bin/{prog}" if any(c[0] == prog for c in self.commands) else None

    def env(self, system="Linux", **kw) -> ProbeEnv:
        def no_module(name):
            raise ImportError(name)

        return ProbeEnv(run=self.run, read=self.read, glob=self.glob, which=self.which, import_module=no_module,
                        system=system, machine="x86_64" if system == "Linux" else "arm64", **kw)


def gpu_only(env: ProbeEnv, *probes):
    """detect_host with the live CPU/RAM probe plus the given GPU probes."""
    return detect_host(env, (probe_cpu_ram, *probes))


# ---------------------------------------------------------------------------------------------- NVIDIA


def test_nvidia_csv_with_header_takes_columns_from_the_header():
    gpus = parse_nvidia_smi_csv(fixture("nvidia-smi-csv-header-titanv-rtx5880.csv"))
    assert [g.name for g in gpus] == ["NVIDIA TITAN V", "NVIDIA RTX 5880 Ada Generation"]
    assert [g.compute_capability for g in gpus] == ["7.0", "8.9"]
    assert {g.driver for g in gpus} == {"570.86.15"}
    assert all(g.memory_bytes is None for g in gpus)  # that query asked for no memory column


def test_nvidia_gpu_without_memory_is_left_out_with_a_note():
    out = fixture("nvidia-smi-csv-header-titanv-rtx5880.csv")
    host = FakeHost({NVIDIA_SMI_CMD: (0, out, "")}, paths=["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"])
    facts = gpu_only(host.env(), probe_nvidia)
    assert facts.hardware.gpus == ()
    assert any("TITAN V" in n and "no memory size" in n for n in facts.notes)


def test_nvidia_noheader_rows_parse_with_the_given_fields():
    gpus = parse_nvidia_smi_csv(fixture("nvidia-smi-noheader-name-free-gtx1050ti-rtx3080ti.csv"), ("name", "memory.free"))
    assert [(g.name, g.free_bytes) for g in gpus] == [("NVIDIA GeForce GTX 1050 Ti", 2131 * 2**20),
                                                       ("NVIDIA GeForce RTX 3080 Ti", 16000 * 2**20)]


def _rtx4090_rows(n: int = 2) -> str:
    # The exact query stackgen runs (noheader, nounits); 24564 MiB is the RTX 4090 figure in profiles/hardware.yaml.
    return "".join(f"NVIDIA GeForce RTX 4090, 24564, {24000 - i}, 550.54.14, 8.9\n" for i in range(n))


def test_nvidia_smi_rows_become_one_gpu_entry_with_count_and_table_bandwidth():
    host = FakeHost({NVIDIA_SMI_CMD: (0, _rtx4090_rows(2), "")}, paths=["/dev/nvidia0", "/dev/nvidia1"])
    facts = gpu_only(host.env(), probe_nvidia)
    (gpu,) = facts.hardware.gpus
    assert (gpu.vendor, gpu.name, gpu.count) == ("nvidia", "GeForce RTX 4090", 2)
    assert gpu.memory_gib == pytest.approx(23.99, abs=0.005)
    assert gpu.bandwidth_gbs == 1008 and gpu.compute_capability == "8.9"
    assert any("known-parts table" in n and "1008" in n for n in facts.notes)
    assert any("23.44 GiB free now" in n and "driver 550.54.14" in n for n in facts.notes)


def test_old_driver_without_compute_cap_is_asked_again_without_it():
    retry = ("nvidia-smi", "--query-gpu=name,memory.total,memory.free,driver_version", "--format=csv,noheader,nounits")
    host = FakeHost({
        # stderr wording modelled on github.com/huggingface/candle/issues/733 (driver 470 lacks compute_cap)
        NVIDIA_SMI_CMD: (2, "", 'Field "compute_cap" is not a valid field to query.\n'),
        retry: (0, "NVIDIA GeForce RTX 3090, 24576, 24000, 470.182.03\n", ""),
    }, paths=["/dev/nvidia0"])
    facts = gpu_only(host.env(), probe_nvidia)
    assert host.calls == [NVIDIA_SMI_CMD, retry]
    assert facts.hardware.gpus[0].bandwidth_gbs == 936 and facts.hardware.gpus[0].compute_capability is None


def test_container_without_device_nodes_flags_and_excludes_the_gpu():
    host = FakeHost({NVIDIA_SMI_CMD: (0, _rtx4090_rows(1), "")}, paths=[])  # nvidia-smi works, no /dev/nvidia0
    facts = gpu_only(host.env(), probe_nvidia)
    assert facts.hardware.gpus == ()
    assert any("/dev/nvidia[0-9]* is missing" in n for n in facts.notes)
    assert any("NOT usable here" in n for n in facts.notes)


def test_wsl_dxg_keeps_the_gpu_and_says_so():
    host = FakeHost({NVIDIA_SMI_CMD: (0, _rtx4090_rows(1), "")}, paths=["/dev/dxg"])
    facts = gpu_only(host.env(), probe_nvidia)
    assert facts.hardware.gpus[0].name == "GeForce RTX 4090"
    assert any(n.startswith("WSL2") and "/dev/dxg" in n for n in facts.notes)


def test_nvml_is_preferred_when_importable():
    class Mem:
        total, free = 81559 * 2**20, 80000 * 2**20

    class FakeNVML:
        calls: list[str] = []

        def nvmlInit(self): self.calls.append("init")
        def nvmlShutdown(self): self.calls.append("shutdown")
        def nvmlSystemGetDriverVersion(self): return b"550.90.07"
        def nvmlDeviceGetCount(self): return 1
        def nvmlDeviceGetHandleByIndex(self, i): return i
        def nvmlDeviceGetName(self, h): return "NVIDIA H100 80GB HBM3"
        def nvmlDeviceGetMemoryInfo(self, h): return Mem()
        def nvmlDeviceGetCudaComputeCapability(self, h): return (9, 0)

    fake = FakeNVML()
    host = FakeHost(paths=["/dev/nvidia0"])
    env = ProbeEnv(run=host.run, read=host.read, glob=host.glob, which=host.which,
                   import_module=lambda name: fake if name == "pynvml" else (_ for _ in ()).throw(ImportError(name)),
                   system="Linux", machine="x86_64")
    facts = gpu_only(env, probe_nvidia)
    (gpu,) = facts.hardware.gpus
    assert (gpu.name, gpu.bandwidth_gbs, gpu.compute_capability, gpu.tier) == ("NVIDIA H100 80GB HBM3", 3350, "9.0", "datacenter")
    assert fake.calls == ["init", "shutdown"] and host.calls == []  # nvidia-smi never ran
    assert any("via NVML" in n for n in facts.notes)


# ---------------------------------------------------------------------------------------------- AMD


def test_rocm_smi_rx7900xt_parses_into_the_expected_profile():
    (g,) = parse_rocm_smi_json(fixture("rocm-smi-rx7900xt.json"))
    assert (g.name, g.memory_bytes, g.free_bytes, g.arch) == ("Radeon RX 7900 XT", 21458059264,
                                                               21458059264 - 27856896, "gfx1100")
    host = FakeHost({ROCM_SMI_CMD: (0, fixture("rocm-smi-rx7900xt.json"), "")}, paths=["/dev/kfd"])
    facts = gpu_only(host.env(), probe_amd)
    (gpu,) = facts.hardware.gpus
    assert (gpu.vendor, gpu.name, gpu.memory_gib, gpu.bandwidth_gbs, gpu.arch) == (
        "amd", "Radeon RX 7900 XT", 19.98, 800.0, "gfx1100")
    assert not any("/dev/kfd" in n for n in facts.notes)


def test_rocm_without_kfd_is_noted():
    host = FakeHost({ROCM_SMI_CMD: (0, fixture("rocm-smi-rx7900xt.json"), "")})
    facts = gpu_only(host.env(), probe_amd)
    assert any("/dev/kfd is missing" in n for n in facts.notes)


def test_rocm_entry_without_memory_is_left_out():
    (g,) = parse_rocm_smi_json(fixture("rocm-smi-productname-mi200.json"))
    assert g.name.startswith("AMD INSTINCT MI200") and g.memory_bytes is None and g.arch == "gfx9010"
    host = FakeHost({ROCM_SMI_CMD: (0, fixture("rocm-smi-productname-mi200.json"), "")}, paths=["/dev/kfd"])
    facts = gpu_only(host.env(), probe_amd)
    assert facts.hardware.gpus == () and any("no memory size" in n for n in facts.notes)


def test_amd_sysfs_fallback_reads_vram_and_skips_igpu_carveouts():
    files = {
        "/sys/class/drm/card0/device/vendor": "0x1002\n",
        "/sys/class/drm/card0/device/device": "0x744c\n",
        "/sys/class/drm/card0/device/product_name": "Radeon RX 7900 XTX\n",
        "/sys/class/drm/card0/device/mem_info_vram_total": "25753026560\n",
        "/sys/class/drm/card0/device/mem_info_vram_used": "1048576\n",
        "/sys/class/drm/card1/device/vendor": "0x1002\n",
        "/sys/class/drm/card1/device/mem_info_vram_total": str(512 * 2**20) + "\n",
    }
    host = FakeHost(files=files, paths=["/sys/class/drm/card0", "/sys/class/drm/card1", "/dev/kfd"])
    facts = gpu_only(host.env(), probe_amd)
    (gpu,) = facts.hardware.gpus
    assert (gpu.name, gpu.memory_gib, gpu.bandwidth_gbs) == ("Radeon RX 7900 XTX", 23.98, 960.0)
    assert any("512 MiB" in n and "carve-out" in n for n in facts.notes)


# ---------------------------------------------------------------------------------------------- Apple


def test_system_profiler_m3_pro_and_default_wired_limit():
    (d,) = parse_system_profiler_displays(fixture("system_profiler-displays-m3pro.json"))
    assert d["name"] == "Apple M3 Pro" and apple_chip(d["name"]) == "M3 Pro"
    memsize = 18 * GIB  # stated value (SOURCE.md), not recorded
    host = FakeHost({
        ("sysctl", "-n", "hw.memsize"): (0, f"{memsize}\n", ""),
        ("sysctl", "-n", "machdep.cpu.brand_string"): (0, "Apple M3 Pro\n", ""),
        SYSTEM_PROFILER_CMD: (0, fixture("system_profiler-displays-m3pro.json"), ""),
        ("sysctl", "iogpu.wired_limit_mb"): (0, "iogpu.wired_limit_mb: 0\n", ""),
    })
    facts = gpu_only(host.env(system="Darwin"), probe_apple)
    hw = facts.hardware
    (gpu,) = hw.gpus
    assert (gpu.vendor, gpu.name, gpu.memory_gib, gpu.bandwidth_gbs, gpu.unified) == ("apple", "Apple M3 Pro", 18.0, 150.0, True)
    assert gpu.memory_type == "lpddr"  # Apple's unified memory, as the built-in Apple profiles state it
    assert gpu.bandwidth_share is None and gpu.decode_bandwidth_gbs == 150.0  # an M3 Pro reads its datasheet figure
    assert hw.memory_gib == 18.0 and hw.memory_bandwidth_gbs == 150.0 and hw.os == "macos"
    assert hw.wired_limit_fraction == pytest.approx(2 / 3, abs=1e-3)
    assert any("0 (macOS default)" in n for n in facts.notes)


def test_m1_old_naming_and_sysctl_brand():
    (d,) = parse_system_profiler_displays(fixture("system_profiler-displays-m1.json"))
    assert apple_chip(d["name"]) == "M1" and d["vendor"] == "apple"
    assert parse_sysctl_value(fixture("sysctl-machdep-cpu-m1.txt"), "machdep.cpu.brand_string") == "Apple M1"
    assert apple_bandwidth("M1", None)[0] == 68.25


def test_m1_max_wired_limit_from_sysctl_and_no_system_profiler():
    assert parse_sysctl_value(fixture("sysctl-set-wired-limit-m1max.txt"), "iogpu.wired_limit_mb") == "26000"
    memsize = 34359738368  # 32 GiB as printed in llmfit#570 (SOURCE.md)
    host = FakeHost({
        ("sysctl", "-n", "hw.memsize"): (0, f"{memsize}\n", ""),
        ("sysctl", "-n", "machdep.cpu.brand_string"): (0, "Apple M1 Max\n", ""),
        SYSTEM_PROFILER_CMD: (1, "", "system_profiler: crashed\n"),
        ("sysctl", "iogpu.wired_limit_mb"): (0, fixture("sysctl-set-wired-limit-m1max.txt"), ""),
    })
    facts = gpu_only(host.env(system="Darwin"), probe_apple)
    (gpu,) = facts.hardware.gpus
    assert gpu.name == "Apple M1 Max" and gpu.bandwidth_gbs == 400
    # confirm-m1 (benchmarks/results/confirm-m1-candidates.md): an M1 Max decodes at 0.86 of it, and the notes say so
    assert gpu.bandwidth_share == 0.86 and gpu.decode_bandwidth_gbs == pytest.approx(344.0)
    assert any("decodes at 0.86 of its 400 GB/s" in n and "confirm-m1" in n for n in facts.notes)
    assert facts.hardware.memory_bandwidth_gbs == 400  # the unified pool's figure for memory stays the datasheet's
    assert facts.hardware.wired_limit_fraction == pytest.approx(26000 / 32768, abs=1e-4)
    assert any("system_profiler gave nothing" in n for n in facts.notes)


# ---------------------------------------------------------------------------------------------- table


def test_known_parts_table_agrees_with_builtin_profiles():
    from stackgen.spec.profiles import load_profiles

    checked = 0
    for name, hw in load_profiles().hardware.items():
        for g in hw.gpus:
            if g.vendor == "apple":
                import re

                cores = re.search(r"(\d+)-core GPU", g.name)
                bw = apple_bandwidth(apple_chip(g.name), int(cores.group(1)) if cores else None)
                assert bw is not None and bw[0] == g.bandwidth_gbs, (name, g.name)
                assert g.memory_type == "lpddr", (name, g.name)  # what detect gives an Apple GPU
                assert g.bandwidth_share == apple_bandwidth_share(g.name), (name, g.name)  # and its decode share
            else:
                known = known_gpu(g.vendor, g.name)
                assert known is not None and known[0] == g.bandwidth_gbs and known[1] == g.tier, (name, g.name, known)
                assert known[2] == g.memory_type, (name, g.name, known)  # the memory the CUDA line follows
            checked += 1
    assert checked >= 15


# name as the driver prints it -> the bandwidth detect plans it at (an MI250X: one GCD, rocm-smi lists two per module)
KNOWN_PARTS = {
    "nvidia": {
        "NVIDIA GeForce RTX 3060": 360, "NVIDIA GeForce RTX 3070": 448, "NVIDIA GeForce RTX 3080": 760,
        "NVIDIA GeForce RTX 4070": 504, "NVIDIA GeForce RTX 4080": 716.8, "NVIDIA GeForce RTX 5080": 960,
        "NVIDIA A10": 600, "NVIDIA H200": 4800, "NVIDIA L40S": 864, "NVIDIA GH200 480GB": 4000,
        "NVIDIA GH200 144G HBM3e": 4900, "NVIDIA GeForce RTX 4070 Ti SUPER": 672, "NVIDIA GeForce RTX 4070 Ti": 504,
        "NVIDIA GeForce RTX 3070 Ti": 608, "NVIDIA GeForce RTX 3060 Ti": 448, "NVIDIA GeForce RTX 5070 Ti": 896,
        "NVIDIA GeForce RTX 5070": 672, "NVIDIA GeForce RTX 5060 Ti": 448, "NVIDIA GeForce RTX 5060": 448,
        "NVIDIA GeForce RTX 2080 Ti": 616, "NVIDIA GeForce RTX 2080 SUPER": 496, "NVIDIA GeForce RTX 2080": 448,
        "NVIDIA GeForce RTX 2060": 336, "NVIDIA GeForce GTX 1080 Ti": 484, "NVIDIA GeForce GTX 1080": 320,
        "Tesla P40": 346, "Tesla P4": 192, "Quadro RTX 8000": 672, "NVIDIA RTX A6000": 768,
        "NVIDIA RTX 6000 Ada Generation": 960, "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition": 1792,
        "NVIDIA RTX A4000": 448, "Tesla T4": 320, "Tesla P100-PCIE-16GB": 732, "Tesla M40 24GB": 288.4,
        "Tesla K80": 240.6, "NVIDIA H100 PCIe": 2000, "NVIDIA A100 80GB PCIe": 1935,
        "NVIDIA H20": 4000, "NVIDIA H200 NVL": 4800, "NVIDIA H800": 3350, "NVIDIA H800 PCIe": 2000, "NVIDIA L20": 864,
        "NVIDIA GeForce GTX 1060 6GB": 192, "NVIDIA GeForce GTX 1660": 192, "NVIDIA GeForce GTX 1660 Ti": 288,
        "NVIDIA GeForce GTX 1660 SUPER": 336, "NVIDIA GeForce RTX 3050": 224,
        "NVIDIA RTX PRO 4000 Blackwell": 672, "NVIDIA RTX PRO 4500 Blackwell": 896,
        "NVIDIA RTX PRO 5000 Blackwell": 1344,
    },
    "amd": {
        "AMD Instinct MI210": 1638.4, "AMD Instinct MI250X": 1638.4, "Radeon RX 7900 XTX": 960,
        "Radeon RX 7900 XT": 800, "AMD Radeon RX 7900 GRE": 576, "AMD Radeon PRO W7900": 864,
        "AMD Radeon PRO W7800": 576, "AMD Radeon RX 9070 XT": 640, "AMD Radeon RX 9070": 640,
        "AMD Radeon AI PRO R9700": 640, "AMD Radeon RX 6950 XT": 576, "AMD Radeon RX 6800 XT": 512,
        "AMD Radeon RX 6800": 512, "AMD Radeon RX 6900 XT": 512, "AMD Radeon 8060S Graphics": 256,
        "AMD Instinct MI300X": 5300, "AMD Instinct MI300A": 5300, "AMD Instinct MI325X": 6000,
        "AMD Instinct MI355X": 8000, "Radeon RX 580 Series": 256,
    },
    "intel": {
        "Intel(R) Arc(TM) A750 Graphics": 512, "Intel(R) Arc(TM) B580 Graphics": 456,
    },
}


@pytest.mark.parametrize("vendor,name,bw", [(v, n, bw) for v, parts in KNOWN_PARTS.items() for n, bw in parts.items()])
def test_known_parts_first_match_is_the_specific_one(vendor, name, bw):
    assert known_gpu(vendor, name)[0] == bw


# an AMD part's name -> the gfx target detect gives it where rocm-smi prints none (rocm.docs.amd.com's GPU table)
AMD_TARGETS = {
    "AMD Instinct MI355X": "gfx950", "AMD Instinct MI325X": "gfx942", "AMD Instinct MI300X": "gfx942",
    "AMD Instinct MI300A": "gfx942", "AMD Instinct MI250X": "gfx90a", "AMD Instinct MI210": "gfx90a",
    "AMD Instinct MI100": "gfx908", "AMD Radeon Instinct MI50": "gfx906", "AMD Radeon Pro VII": "gfx906",
    "AMD Radeon PRO W7900": "gfx1100", "AMD Radeon RX 7900 GRE": "gfx1100", "AMD Radeon RX 9070 XT": "gfx1201",
    "AMD Radeon AI PRO R9700": "gfx1201", "AMD Radeon RX 6800 XT": "gfx1030", "AMD Radeon 8060S Graphics": "gfx1151",
    "AMD Radeon RX 580": "gfx803", "AMD Radeon RX 570": None,
}


@pytest.mark.parametrize("name,arch", sorted(AMD_TARGETS.items()))
def test_an_amd_part_has_its_gfx_target_from_the_same_row_as_its_bandwidth(name, arch):
    from stackgen.host.detect import KNOWN_GPUS, amd_arch
    assert amd_arch(name) == arch
    if arch is not None:  # every AMD part with a target is a known part, and the other way round
        assert known_gpu("amd", name) is not None
    assert all(row.arch for row in KNOWN_GPUS if row.vendor == "amd")
    assert not any(row.arch for row in KNOWN_GPUS if row.vendor != "amd")


def test_detect_plans_a_public_corpus_gpu_at_the_bandwidth_the_corpus_scored_it_at():
    """Each GPU of the public decode corpus (tests/fixtures/public-logs/decode_speed.yaml) that detect knows by name is
    planned at the datasheet figure the point was scored against (a tensor-parallel point: its GPUs' sum), so the corpus
    checks the figures plans use. The one exception: the corpus's Tesla P40 rows read 347 GB/s (384-bit x 7.23 Gbps),
    NVIDIA's datasheet 346."""
    import yaml
    from pathlib import Path
    points = yaml.safe_load(Path(__file__).parents[1].joinpath("fixtures/public-logs/decode_speed.yaml").read_text())
    vendors = {"cuda": ("nvidia",), "cuda-datacenter": ("nvidia",), "rocm": ("amd",),
               "vulkan": ("amd", "nvidia", "intel"), "sycl": ("intel",), "vllm": ("nvidia", "amd"),
               "sglang": ("nvidia", "amd")}
    checked, off = 0, {}
    for p in points["points"] if isinstance(points, dict) else points:
        for vendor in vendors.get(p.get("backend"), ()):
            known = known_gpu(vendor, p["gpu"])
            if known:
                checked += 1
                if known[0] * p.get("tensor_parallel", 1) != p["bandwidth_gbs"]:  # a TP point: its GPUs' sum
                    off[p["gpu"]] = (p["bandwidth_gbs"], known[0])
                break
    assert checked >= 250
    assert off == {"Tesla P40": (347, 346)}


@pytest.mark.parametrize("name,memory,line", [
    ("NVIDIA L40S", "gddr", "cuda"), ("NVIDIA L40", "gddr", "cuda"), ("NVIDIA A40", "gddr", "cuda"),
    ("NVIDIA L4", "gddr", "cuda"), ("NVIDIA A10G", "gddr", "cuda"), ("NVIDIA A10", "gddr", "cuda"),
    ("Tesla T4", "gddr", "cuda"), ("NVIDIA A30", "hbm", "cuda-datacenter"), ("Tesla V100-PCIE-16GB", "hbm", "cuda-datacenter"),
    ("NVIDIA A100-SXM4-80GB", "hbm", "cuda-datacenter"), ("NVIDIA H100 PCIe", "hbm", "cuda-datacenter"),
    ("NVIDIA H200", "hbm", "cuda-datacenter"), ("NVIDIA GeForce RTX 4090", "gddr", "cuda"),
    ("Tesla P100-PCIE-16GB", "hbm", "cuda-datacenter"), ("Tesla M40 24GB", "gddr", "cuda"), ("Tesla K80", "gddr", "cuda"),
])
def test_detected_datacenter_gpus_carry_their_memory_and_pick_its_cuda_line(name, memory, line):
    """confirm-tier: a detected NVIDIA GPU gets its datasheet memory type, and a GDDR datacenter GPU plans on the
    consumer CUDA line (speed.backend_for), an HBM one on the datacenter line."""
    from stackgen.plan import speed
    host = FakeHost({NVIDIA_SMI_CMD: (0, f"{name}, 24000, 23000, 570.86.15, 8.0\n", "")}, paths=["/dev/nvidia0"])
    g = gpu_only(host.env(), probe_nvidia).hardware.gpus[0]
    assert g.memory_type == memory
    assert speed.backend_for(None, g.vendor, g.tier, g.memory_type) == line


def test_unknown_part_gets_a_conservative_guess_and_says_so():
    host = FakeHost({NVIDIA_SMI_CMD: (0, "NVIDIA RTX 5880 Ada Generation, 49140, 49000, 570.86.15, 8.9\n", "")},
                    paths=["/dev/nvidia0"])
    facts = gpu_only(host.env(), probe_nvidia)
    assert facts.hardware.gpus[0].bandwidth_gbs == 300
    assert facts.hardware.gpus[0].memory_type is None  # not guessed
    assert any("not in the known-parts table" in n for n in facts.notes)


# ---------------------------------------------------------------------------------------------- live CPU/RAM


def test_live_cpu_and_ram_probe_matches_this_machine():
    host = detect_host(FakeHost().env(system=platform.system()), (probe_cpu_ram,))
    hw = host.hardware
    assert hw.cpu.threads == os.cpu_count()
    assert hw.cpu.cores == (psutil.cpu_count(logical=False) or os.cpu_count())
    assert 1 <= hw.cpu.cores <= hw.cpu.threads
    if Path("/proc/meminfo").exists():
        import re

        kb = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1))
        assert hw.memory_gib * GIB == pytest.approx(kb * 1024, rel=0.01)
    assert 0 < host.available_memory_bytes <= hw.memory_gib * GIB * 1.01
    assert any("table value" in n for n in host.notes)  # no --measure: bandwidth is the table figure


def test_measured_memory_bandwidth_is_positive():
    # How long the probe takes is a benchmark figure, not a unit-test bound: this machine is shared and noisy.
    bw = measure_memory_bandwidth()
    assert 0.5 < bw < 2000
    host = detect_host(FakeHost().env(system=platform.system()), (probe_cpu_ram,), measure=True)
    assert any("measured" in n for n in host.notes) and host.hardware.memory_bandwidth_gbs > 0.5


# ---------------------------------------------------------------------------------------------- failures


def _fake_tool(tmp_path: Path, name: str, body: str) -> None:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell script as a fake nvidia-smi")
def test_hanging_nvidia_smi_is_cut_at_the_timeout(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "nvidia-smi", "sleep 30")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    t0 = time.monotonic()
    host = detect_host(ProbeEnv(timeout=1.0, import_module=_no_module))
    took = time.monotonic() - t0
    assert took < 1.0 + 4.0, took
    assert any("nvidia-smi` did not answer within 1 s" in n for n in host.notes)
    assert host.hardware.memory_gib > 0 and host.hardware.gpus == ()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell script as a fake nvidia-smi")
def test_failing_nvidia_smi_becomes_a_note(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2; exit 9")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    host = detect_host(ProbeEnv(timeout=2.0, import_module=_no_module))
    assert any("`nvidia-smi` exited 9: NVIDIA-SMI has failed" in n for n in host.notes)
    assert host.hardware.gpus == ()


def test_garbage_output_and_crashing_probe_never_break_detection():
    host = FakeHost({ROCM_SMI_CMD: (0, "not json {", "")})

    def exploding(env, facts):
        raise RuntimeError("boom")

    facts = detect_host(host.env(), (probe_cpu_ram, probe_amd, exploding))
    assert facts.hardware.memory_gib > 0
    assert any("rocm-smi gave no JSON" in n for n in facts.notes)
    assert any("exploding: probe failed (RuntimeError: boom)" in n for n in facts.notes)


def _no_module(name):
    raise ImportError(name)


# ---------------------------------------------------------------------------------------------- CLI


def test_detect_cli_yaml_is_an_inline_profile_and_json_feeds_plan(tmp_path):
    from stackgen.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["detect"])
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.stdout)
    hw = HardwareSpec.model_validate(doc["hardware"], strict=False)
    assert hw.memory_gib > 0 and "# - CPU/RAM: psutil" in res.stdout

    res = runner.invoke(app, ["detect", "--json"])
    assert res.exit_code == 0, res.output
    host_file = tmp_path / "host.json"
    host_file.write_text(res.stdout)
    assert HostFacts.load(host_file).hardware == hw
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nhardware: detect\nworkload: quickstart\nservices:\n  chat:\n    model: gemma-3-270m-it\n")
    res = runner.invoke(app, ["plan", str(stack), "--host-facts", str(host_file), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["hardware"]["memory_gib"] == hw.memory_gib


def test_measured_bandwidth_is_cached_for_later_detect_stacks(tmp_path):
    """`detect --measure` stores its figure; a later plain detect on the same machine uses it, another machine not."""
    import dataclasses

    cache = str(tmp_path / "bw.json")
    env = dataclasses.replace(FakeHost().env(system=platform.system()), bandwidth_cache=cache)
    measured = detect_host(env, (probe_cpu_ram,), measure=True)
    bw = measured.hardware.memory_bandwidth_gbs
    assert bw > 0.5 and (tmp_path / "bw.json").is_file()
    later = detect_host(env, (probe_cpu_ram,))
    assert later.hardware.memory_bandwidth_gbs == bw
    assert any("measured earlier" in n for n in later.notes)
    data = json.loads((tmp_path / "bw.json").read_text())
    data["machine"] = "another|cpu|1|1|1GiB"
    (tmp_path / "bw.json").write_text(json.dumps(data))
    other = detect_host(env, (probe_cpu_ram,))
    assert any("table value" in n for n in other.notes)
