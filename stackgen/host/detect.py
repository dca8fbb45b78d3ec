"""Probe this machine: GPUs (NVIDIA, AMD, Intel, Apple), CPU and RAM, container/WSL quirks.

Every probe is optional. Probes are an ordered tuple of functions ``probe(env, facts) -> None``; each gets a
:class:`ProbeEnv` (how to run a command, read a file, list paths, import a module) so tests inject recorded outputs
instead of monkeypatching globals. A probe that is missing, fails or hangs never breaks detection: subprocesses run
with a timeout, any exception becomes a note, and ``HostFacts.notes`` says where every figure came from.

Bandwidth is rarely reported by drivers; :data:`KNOWN_GPUS` holds vendor peak figures (GB/s = 1e9 B/s) with the
source of each in a comment. Figures shared with profiles/hardware.yaml are the same numbers.
"""

from __future__ import annotations

import dataclasses
import glob as _glob
import importlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

from stackgen import datafile
from stackgen.errors import StackgenError
from stackgen.host.facts import DEFAULT_MEMORY_BANDWIDTH_GBS, HostFacts
from stackgen.spec.stack import COMPUTE_CAPABILITY, CPUSpec, GPUSpec, HardwareSpec

GIB = 2**30
MIB = 2**20
DEFAULT_TIMEOUT_S = 5.0

NVIDIA_QUERY_FIELDS = ("name", "memory.total", "memory.free", "driver_version", "compute_cap")
NVIDIA_SMI_CMD = ("nvidia-smi", "--query-gpu=" + ",".join(NVIDIA_QUERY_FIELDS), "--format=csv,noheader,nounits")
ROCM_SMI_CMD = ("rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json")
SYSTEM_PROFILER_CMD = ("system_profiler", "SPDisplaysDataType", "-json")


class DetectError(StackgenError):
    """Detection could not produce a usable description of this machine."""


# ---------------------------------------------------------------------------------------------- environment


Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]
Reader = Callable[[str], str]


def run_command(cmd: Sequence[str], timeout: float) -> "subprocess.CompletedProcess[str]":
    """Run a command with a hard timeout; kill its whole process group when it hangs.

    Raises FileNotFoundError when the program is missing and subprocess.TimeoutExpired when it hangs.
    """
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


@dataclass(frozen=True)
class ProbeEnv:
    """Everything a probe may touch on the host. Tests replace the parts they need."""

    run: Runner = run_command
    read: Reader = read_text
    glob: Callable[[str], list[str]] = _glob.glob
    which: Callable[[str], str | None] = shutil.which
    import_module: Callable[[str], Any] = importlib.import_module
    system: str = field(default_factory=platform.system)
    machine: str = field(default_factory=platform.machine)
    timeout: float = DEFAULT_TIMEOUT_S
    measure: bool = False  # measure system RAM bandwidth (a few hundred ms)
    # Where `detect --measure` keeps its figure so later `hardware: detect` plans use it (None: no cache).
    bandwidth_cache: str | None = field(default_factory=lambda: default_bandwidth_cache())

    def output(self, cmd: Sequence[str]) -> str:
        """stdout of a command that must exist and succeed; raises ProbeFailed otherwise."""
        if self.which(cmd[0]) is None:
            raise ProbeMissing(f"{cmd[0]} not found on PATH")
        try:
            cp = self.run(cmd, self.timeout)
        except subprocess.TimeoutExpired:
            raise ProbeFailed(f"`{cmd[0]}` did not answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise ProbeFailed(f"`{cmd[0]}` could not run: {exc.strerror or exc}") from None
        if cp.returncode != 0:
            first = ((cp.stderr or "").strip() or (cp.stdout or "").strip()).splitlines()[:1]
            raise ProbeFailed(f"`{cmd[0]}` exited {cp.returncode}" + (f": {first[0][:200]}" if first else ""))
        return cp.stdout or ""

    def read_or_none(self, path: str) -> str | None:
        try:
            return self.read(path)
        except (OSError, UnicodeError):
            return None


class ProbeMissing(Exception):
    """The tool or library a probe needs is not installed (quietly skipped, noted)."""


class ProbeFailed(Exception):
    """The tool is there but did not give an answer."""


# ---------------------------------------------------------------------------------------------- facts


@dataclass
class DetectedGPU:
    vendor: str
    name: str
    memory_bytes: int | None
    free_bytes: int | None = None
    driver: str | None = None
    compute_capability: str | None = None
    arch: str | None = None
    cores: int | None = None
    source: str = ""
    usable: bool = True
    unified: bool = False


@dataclass
class Facts:
    """What the probes found so far (mutable while probing; frozen into HostFacts at the end)."""

    gpus: list[DetectedGPU] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory_bytes: int | None = None
    available_bytes: int | None = None
    cores: int | None = None
    threads: int | None = None
    arch: str = "x86_64"
    os: str = "linux"
    cpu_name: str | None = None
    memory_bandwidth_gbs: float | None = None
    wired_limit_fraction: float | None = None
    hostname: str = ""
    gpu_link: str | None = None  # nvlink | pcie-p2p | pcie between the GPUs (nvidia-smi topo), None: not read

    def note(self, text: str) -> None:
        self.notes.append(text)


Probe = Callable[[ProbeEnv, Facts], None]


# ---------------------------------------------------------------------------------------------- known parts

class KnownGPU(NamedTuple):
    """A row of KNOWN_GPUS: a part `stackgen detect` knows by name."""
    vendor: str
    pattern: str  # regex on the lower-cased name the driver reports
    bandwidth_gbs: float  # datasheet peak
    tier: str
    memory: str  # GPUSpec.memory_type
    source: str
    arch: str | None = None  # an AMD part's gfx target (GPUSpec.arch) where rocm-smi prints none (amd_arch)


# (vendor, regex on the reported name, peak memory bandwidth GB/s, tier, memory type, source[, gfx target]). First match
# wins, so the more specific names come first. Names are matched case-insensitively against what the driver reports
# ("NVIDIA GeForce RTX 4090", "Radeon RX 7900 XTX", "AMD Instinct MI300X", "Intel(R) Arc(TM) A770 Graphics").
KNOWN_GPUS: tuple[KnownGPU, ...] = tuple(KnownGPU(*row) for row in (
    # NVIDIA GeForce: bus width x data rate, from nvidia.com/en-us/geforce/graphics-cards/<series>/ spec tables.
    ("nvidia", r"rtx 5090", 1792, "consumer", "gddr", "512-bit x 28 Gbps GDDR7; nvidia.com 50-series RTX 5090 specs (= profiles/hardware.yaml)"),
    ("nvidia", r"rtx 5080", 960, "consumer", "gddr", "256-bit x 30 Gbps GDDR7; nvidia.com 50-series RTX 5080 specs"),
    ("nvidia", r"rtx 5070 ti", 896, "consumer", "gddr", "256-bit x 28 Gbps GDDR7; nvidia.com 50-series RTX 5070 family specs"),
    ("nvidia", r"rtx 5070", 672, "consumer", "gddr", "192-bit x 28 Gbps GDDR7; nvidia.com 50-series RTX 5070 family specs"),
    ("nvidia", r"rtx 5060", 448, "consumer", "gddr", "128-bit x 28 Gbps GDDR7 (5060 and 5060 Ti); nvidia.com 50-series RTX 5060 family specs"),
    ("nvidia", r"rtx 4090", 1008, "consumer", "gddr", "384-bit x 21 Gbps GDDR6X; nvidia.com 40-series RTX 4090 specs (= profiles/hardware.yaml)"),
    ("nvidia", r"rtx 4080 super", 736, "consumer", "gddr", "256-bit x 23 Gbps GDDR6X; nvidia.com 40-series RTX 4080 family specs"),
    ("nvidia", r"rtx 4080", 716.8, "consumer", "gddr", "256-bit x 22.4 Gbps GDDR6X; nvidia.com 40-series RTX 4080 family specs"),
    ("nvidia", r"rtx 4070 ti super", 672, "consumer", "gddr", "256-bit x 21 Gbps GDDR6X; nvidia.com 40-series RTX 4070 family specs"),
    ("nvidia", r"rtx 4070", 504, "consumer", "gddr", "192-bit x 21 Gbps GDDR6X (4070 / Super / Ti; the Ti Super above); nvidia.com 40-series RTX 4070 family specs"),
    ("nvidia", r"rtx 4060 ti", 288, "consumer", "gddr", "128-bit x 18 Gbps GDDR6; nvidia.com RTX 4060 family specs (= profiles/hardware.yaml)"),
    ("nvidia", r"rtx 4060", 272, "consumer", "gddr", "128-bit x 17 Gbps GDDR6; nvidia.com RTX 4060 family specs (= profiles/hardware.yaml)"),
    ("nvidia", r"rtx 3090 ti", 1008, "consumer", "gddr", "384-bit x 21 Gbps GDDR6X; nvidia.com 30-series RTX 3090 family specs"),
    ("nvidia", r"rtx 3090", 936, "consumer", "gddr", "384-bit x 19.5 Gbps GDDR6X; nvidia.com 30-series RTX 3090 family specs (= profiles/hardware.yaml)"),
    ("nvidia", r"rtx 3080 ti", 912, "consumer", "gddr", "384-bit x 19 Gbps GDDR6X; nvidia.com 30-series RTX 3080 family specs"),
    ("nvidia", r"rtx 3080", 760, "consumer", "gddr", "320-bit x 19 Gbps GDDR6X (10 GB card; the 12 GB card is 912); nvidia.com RTX 3080 family specs"),
    ("nvidia", r"rtx 3070 ti", 608, "consumer", "gddr", "256-bit x 19 Gbps GDDR6X; nvidia.com 30-series RTX 3070 family specs"),
    ("nvidia", r"rtx 3070", 448, "consumer", "gddr", "256-bit x 14 Gbps GDDR6; nvidia.com 30-series RTX 3070 family specs"),
    ("nvidia", r"rtx 3060 ti", 448, "consumer", "gddr", "256-bit x 14 Gbps GDDR6 (the GDDR6X card: 608); nvidia.com 30-series RTX 3060 family specs"),
    ("nvidia", r"rtx 3060", 360, "consumer", "gddr", "192-bit x 15 Gbps GDDR6 (12 GB card; the 8 GB card is 240); nvidia.com RTX 3060 family specs"),
    ("nvidia", r"rtx 3050", 224, "consumer", "gddr", "128-bit x 14 Gbps GDDR6 (8 GB card); nvidia.com RTX 3050 family specs"),
    # Older GeForce, TITAN and the workstation cards common on local-LLM hosts: bus width x data rate from the same
    # spec tables (nvidia.com/en-us/geforce/graphics-cards/, nvidia.com/en-us/design-visualization/).
    ("nvidia", r"rtx 2080 ti", 616, "consumer", "gddr", "352-bit x 14 Gbps GDDR6; nvidia.com RTX 2080 Ti specs"),
    ("nvidia", r"rtx 2080 super", 496, "consumer", "gddr", "256-bit x 15.5 Gbps GDDR6; nvidia.com RTX 2080 Super specs"),
    ("nvidia", r"rtx 20[78]0", 448, "consumer", "gddr", "256-bit x 14 Gbps GDDR6 (2070, 2070 Super, 2080); nvidia.com 20-series specs"),
    ("nvidia", r"rtx 2060 super", 448, "consumer", "gddr", "256-bit x 14 Gbps GDDR6; nvidia.com RTX 2060 Super specs"),
    ("nvidia", r"rtx 2060", 336, "consumer", "gddr", "192-bit x 14 Gbps GDDR6 (6 GB card); nvidia.com RTX 2060 specs"),
    ("nvidia", r"gtx 1080 ti", 484, "consumer", "gddr", "352-bit x 11 Gbps GDDR5X; nvidia.com GTX 1080 Ti specs"),
    ("nvidia", r"gtx 1080", 320, "consumer", "gddr", "256-bit x 10 Gbps GDDR5X; nvidia.com GTX 1080 specs"),
    ("nvidia", r"gtx 1070", 256, "consumer", "gddr", "256-bit x 8 Gbps GDDR5 (1070; the Ti too); nvidia.com GTX 1070 specs"),
    ("nvidia", r"gtx 1060", 192, "consumer", "gddr", "192-bit x 8 Gbps GDDR5 (6 GB and 3 GB cards); nvidia.com GTX 1060 specs"),
    ("nvidia", r"gtx 1660 super", 336, "consumer", "gddr", "192-bit x 14 Gbps GDDR6; nvidia.com GTX 1660 Super specs"),
    ("nvidia", r"gtx 1660 ti", 288, "consumer", "gddr", "192-bit x 12 Gbps GDDR6; nvidia.com GTX 1660 Ti specs"),
    ("nvidia", r"gtx 1660", 192, "consumer", "gddr", "192-bit x 8 Gbps GDDR5; nvidia.com GTX 1660 specs"),
    ("nvidia", r"titan rtx|quadro rtx [68]000", 672, "workstation", "gddr", "384-bit x 14 Gbps GDDR6; nvidia.com TITAN RTX / Quadro RTX 6000 / 8000 specs"),
    ("nvidia", r"rtx pro 6000", 1792, "workstation", "gddr", "512-bit x 28 Gbps GDDR7; nvidia.com RTX PRO 6000 Blackwell specs (Workstation, Max-Q and Server alike)"),
    ("nvidia", r"rtx pro 5000", 1344, "workstation", "gddr", "384-bit x 28 Gbps GDDR7; nvidia.com RTX PRO 5000 Blackwell specs"),
    ("nvidia", r"rtx pro 4500", 896, "workstation", "gddr", "256-bit x 28 Gbps GDDR7; nvidia.com RTX PRO 4500 Blackwell specs"),
    ("nvidia", r"rtx pro 4000", 672, "workstation", "gddr", "192-bit x 28 Gbps GDDR7; nvidia.com RTX PRO 4000 Blackwell specs"),
    ("nvidia", r"rtx 6000 ada", 960, "workstation", "gddr", "384-bit x 20 Gbps GDDR6; nvidia.com RTX 6000 Ada Generation datasheet"),
    ("nvidia", r"rtx 5000 ada", 576, "workstation", "gddr", "256-bit x 18 Gbps GDDR6; nvidia.com RTX 5000 Ada Generation datasheet"),
    ("nvidia", r"rtx a[56]000", 768, "workstation", "gddr", "384-bit x 16 Gbps GDDR6; nvidia.com RTX A6000 / A5000 datasheets"),
    ("nvidia", r"rtx a4000", 448, "workstation", "gddr", "256-bit x 14 Gbps GDDR6; nvidia.com RTX A4000 datasheet"),
    # NVIDIA datacenter: nvidia.com/en-us/data-center/<product>/ datasheets.
    # GH200 before H200 (its name contains it): nvidia-smi says 'NVIDIA GH200 480GB' for the 96 GB HBM3 module,
    # 'NVIDIA GH200 144G HBM3e' for the later one.
    ("nvidia", r"gh200.*(144|hbm3e)", 4900, "datacenter", "hbm", "GH200 datasheet: 144 GB HBM3e at 4.9 TB/s"),
    ("nvidia", r"gh200", 4000, "datacenter", "hbm", "GH200 datasheet: 96 GB HBM3 at 4 TB/s"),
    ("nvidia", r"h200", 4800, "datacenter", "hbm", "H200 datasheet: 141 GB HBM3e at 4.8 TB/s"),
    ("nvidia", r"h100.*nvl", 3900, "datacenter", "hbm", "H100 datasheet: H100 NVL 3.9 TB/s"),
    ("nvidia", r"h100.*pcie", 2000, "datacenter", "hbm", "H100 datasheet: H100 PCIe 2.0 TB/s"),
    ("nvidia", r"h100", 3350, "datacenter", "hbm", "H100 datasheet: SXM 3.35 TB/s (= profiles/hardware.yaml)"),
    ("nvidia", r"h800.*pcie", 2000, "datacenter", "hbm", "H800 PCIe: the H100 PCIe's 80 GB HBM2e, 2.0 TB/s"),
    ("nvidia", r"h800", 3350, "datacenter", "hbm", "H800 SXM: the H100 SXM's 80 GB HBM3, 3.35 TB/s"),
    ("nvidia", r"\bh20\b", 4000, "datacenter", "hbm", "H20: 96 GB HBM3 at 4.0 TB/s (= the public corpus's H20 points)"),
    ("nvidia", r"a100.*80gb.*pcie", 1935, "datacenter", "hbm", "A100 datasheet: 80 GB PCIe 1,935 GB/s"),
    ("nvidia", r"a100.*80gb", 2039, "datacenter", "hbm", "A100 datasheet: 80 GB SXM 2,039 GB/s (= profiles/hardware.yaml)"),
    ("nvidia", r"a100", 1555, "datacenter", "hbm", "A100 datasheet: 40 GB HBM2 1,555 GB/s (= profiles/hardware.yaml)"),
    ("nvidia", r"l40s", 864, "datacenter", "gddr", "L40S datasheet: 48 GB GDDR6 864 GB/s"),
    ("nvidia", r"\bl40\b", 864, "datacenter", "gddr", "L40 datasheet: 48 GB GDDR6 864 GB/s"),
    ("nvidia", r"\bl20\b", 864, "datacenter", "gddr", "L20: 48 GB GDDR6 864 GB/s (the L40's memory system)"),
    ("nvidia", r"\ba40\b", 696, "datacenter", "gddr", "A40 datasheet: 48 GB GDDR6 696 GB/s"),
    ("nvidia", r"\ba30\b", 933, "datacenter", "hbm", "A30 datasheet: 24 GB HBM2 933 GB/s"),
    ("nvidia", r"v100", 900, "datacenter", "hbm", "V100 datasheet: 16/32 GB HBM2 900 GB/s (PCIe and SXM2)"),
    ("nvidia", r"p100", 732, "datacenter", "hbm", "P100 datasheet: 16 GB HBM2 732 GB/s (PCIe 16 GB and SXM2; the 12 GB PCIe card is 549)"),
    ("nvidia", r"\bm40\b", 288.4, "datacenter", "gddr", "M40 datasheet: 24 GB GDDR5, 384-bit at 6.0 Gbps = 288.4 GB/s"),
    ("nvidia", r"\bk80\b", 240.6, "datacenter", "gddr", "K80 datasheet: 480 GB/s GDDR5 per board of two GK210s, which nvidia-smi lists as two GPUs: 240.6 each"),
    ("nvidia", r"\bl4\b", 300, "datacenter", "gddr", "L4 datasheet: 300 GB/s (= profiles/hardware.yaml)"),
    ("nvidia", r"\ba10g?\b", 600, "datacenter", "gddr", "A10 datasheet: 24 GB GDDR6 600 GB/s (AWS's A10G: the same 24 GB GDDR6, 600 GB/s)"),
    ("nvidia", r"\bt4\b", 320, "datacenter", "gddr", "T4 datasheet: 16 GB GDDR6 320+ GB/s"),
    ("nvidia", r"\bp40\b", 346, "datacenter", "gddr", "Tesla P40 datasheet: 24 GB GDDR5 346 GB/s"),
    ("nvidia", r"\bp4\b", 192, "datacenter", "gddr", "Tesla P4 datasheet: 8 GB GDDR5 192 GB/s"),
    # AMD: amd.com product pages; the gfx target of each (the last column) from rocm.docs.amd.com's GPU specification
    # table, for speed.Backend.arch_bandwidth_share where rocm-smi prints none (ROCm 5's JSON, a Vulkan-only host).
    ("amd", r"mi35[05]", 8000, "datacenter", "hbm", "amd.com Instinct MI350X / MI355X: 288 GB HBM3E at 8 TB/s", "gfx950"),
    ("amd", r"mi325", 6000, "datacenter", "hbm", "amd.com Instinct MI325X: 256 GB HBM3E at 6 TB/s", "gfx942"),
    ("amd", r"mi300", 5300, "datacenter", "hbm", "amd.com Instinct MI300X / MI300A: 5.3 TB/s peak (= profiles/hardware.yaml)", "gfx942"),
    ("amd", r"mi250", 1638.4, "datacenter", "hbm", "amd.com Instinct MI250/MI250X: 3.2 TB/s (3276.8 GB/s) peak per module of two GCDs, which rocm-smi lists as two GPUs of 64 GB: 1638.4 each", "gfx90a"),
    ("amd", r"mi210", 1638.4, "datacenter", "hbm", "amd.com Instinct MI210: 1.6 TB/s (1638.4 GB/s) peak", "gfx90a"),
    ("amd", r"mi100", 1228.8, "datacenter", "hbm", "amd.com Instinct MI100: 1.23 TB/s (1228.8 GB/s) peak HBM2", "gfx908"),
    ("amd", r"mi50\b|mi60\b", 1024, "datacenter", "hbm", "amd.com Radeon Instinct MI50 / MI60: 4096-bit HBM2, 1 TB/s (1024 GB/s)", "gfx906"),
    ("amd", r"radeon pro vii", 1024, "workstation", "hbm", "amd.com Radeon Pro VII: 4096-bit HBM2, 1 TB/s (1024 GB/s)", "gfx906"),
    ("amd", r"radeon vii", 1024, "consumer", "hbm", "amd.com Radeon VII: 4096-bit HBM2, 1 TB/s (1024 GB/s)", "gfx906"),
    ("amd", r"w7900", 864, "workstation", "gddr", "384-bit x 18 Gbps GDDR6; amd.com Radeon PRO W7900", "gfx1100"),
    ("amd", r"w7800", 576, "workstation", "gddr", "256-bit x 18 Gbps GDDR6; amd.com Radeon PRO W7800", "gfx1100"),
    ("amd", r"7900 xtx", 960, "consumer", "gddr", "384-bit x 20 Gbps GDDR6; amd.com Radeon RX 7900 XTX (= profiles/hardware.yaml)", "gfx1100"),
    ("amd", r"7900 xt\b", 800, "consumer", "gddr", "320-bit x 20 Gbps GDDR6; amd.com Radeon RX 7900 XT", "gfx1100"),
    ("amd", r"7900 gre", 576, "consumer", "gddr", "256-bit x 18 Gbps GDDR6; amd.com Radeon RX 7900 GRE", "gfx1100"),
    ("amd", r"r9700", 640, "workstation", "gddr", "256-bit x 20 Gbps GDDR6; amd.com Radeon AI PRO R9700", "gfx1201"),
    ("amd", r"9070", 640, "consumer", "gddr", "256-bit x 20 Gbps GDDR6 (9070 XT and 9070); amd.com Radeon RX 9070 series", "gfx1201"),
    ("amd", r"6950 xt", 576, "consumer", "gddr", "256-bit x 18 Gbps GDDR6; amd.com Radeon RX 6950 XT", "gfx1030"),
    ("amd", r"6[89]00 xt|6800\b", 512, "consumer", "gddr", "256-bit x 16 Gbps GDDR6 (6800, 6800 XT, 6900 XT); amd.com Radeon RX 6000 series", "gfx1030"),
    ("amd", r"8060s", 256, "consumer", "lpddr", "256-bit LPDDR5X-8000 shared with the CPU; amd.com Ryzen AI Max+ 395 (Radeon 8060S)", "gfx1151"),
    ("amd", r"\brx 5[89]0\b", 256, "consumer", "gddr", "256-bit x 8 Gbps GDDR5 (RX 580 and 590; the RX 570 is 224); amd.com Radeon RX 580", "gfx803"),
    # Intel: intel.com/ark product specifications.
    ("intel", r"a770", 560, "consumer", "gddr", "256-bit x 17.5 Gbps GDDR6, 16 GB card (8 GB card: 512); ark.intel.com Arc A770 (= profiles/hardware.yaml)"),
    ("intel", r"a750", 512, "consumer", "gddr", "256-bit x 16 Gbps GDDR6; ark.intel.com Arc A750"),
    ("intel", r"b580", 456, "consumer", "gddr", "192-bit x 19 Gbps GDDR6; intel.com Arc B580 specifications"),
))

# Apple silicon unified-memory bandwidth (GB/s) per chip, keyed by (chip, GPU cores or None for every bin);
# apple.com/newsroom launch notes for each chip. The Max bins with fewer GPU cores have a narrower bus.
APPLE_BANDWIDTH: dict[tuple[str, int | None], tuple[float, str]] = {
    ("M1", None): (68.25, "apple.com newsroom (Nov 2020, M1): 68.25 GB/s LPDDR4X-4266"),
    ("M1 Pro", None): (200, "apple.com newsroom (Oct 2021, M1 Pro/Max): M1 Pro 200GB/s"),
    ("M1 Max", None): (400, "apple.com newsroom (Oct 2021, M1 Pro/Max): M1 Max 400GB/s"),
    ("M1 Ultra", None): (800, "apple.com newsroom (Mar 2022, M1 Ultra): 800GB/s"),
    ("M2", None): (100, "apple.com newsroom (Jun 2022, M2): 100GB/s"),
    ("M2 Pro", None): (200, "apple.com newsroom (Jan 2023, M2 Pro/Max): M2 Pro 200GB/s"),
    ("M2 Max", None): (400, "apple.com newsroom (Jan 2023, M2 Pro/Max): M2 Max 400GB/s"),
    ("M2 Ultra", None): (800, "apple.com newsroom (Jun 2023, M2 Ultra): 800GB/s (= profiles/hardware.yaml)"),
    ("M3", None): (100, "apple.com newsroom (Oct 2023, M3 family): M3 100GB/s"),
    ("M3 Pro", None): (150, "apple.com newsroom (Oct 2023, M3 family): M3 Pro 150GB/s"),
    ("M3 Max", 30): (300, "apple.com newsroom (Oct 2023, M3 family): M3 Max 30-core GPU bin 300GB/s"),
    ("M3 Max", None): (400, "apple.com newsroom (Oct 2023, M3 family): M3 Max up to 400GB/s (= profiles/hardware.yaml)"),
    ("M3 Ultra", None): (819, "apple.com newsroom (Mar 2025, Mac Studio): M3 Ultra 819GB/s"),
    ("M4", None): (120, "apple.com newsroom (Oct 2024, M4): 120GB/s (= profiles/hardware.yaml)"),
    ("M4 Pro", None): (273, "apple.com newsroom (Oct 2024, M4 Pro/Max): M4 Pro 273GB/s"),
    ("M4 Max", 32): (410, "apple.com newsroom (Oct 2024, M4 Pro/Max): M4 Max 32-core GPU bin 410GB/s"),
    ("M4 Max", None): (546, "apple.com newsroom (Oct 2024, M4 Pro/Max): M4 Max 546GB/s (= profiles/hardware.yaml)"),
}

# Apple chips whose GPU reads measurably less than the datasheet bandwidth in decode (GPUSpec.bandwidth_share): the
# M1 generation's two large dies, on llama.cpp's Metal and MLX alike (pre-registered and confirmed on blind points:
# benchmarks/results/confirm-m1-candidates.md). Every other chip reads its datasheet figure.
APPLE_BANDWIDTH_SHARE: dict[str, tuple[float, str]] = {
    "M1 Max": (0.86, "confirm-m1 (benchmarks/results/confirm-m1-candidates.md): 344 of 400 GB/s in decode"),
    "M1 Ultra": (0.86, "confirm-m1 (benchmarks/results/confirm-m1-candidates.md): 688 of 800 GB/s in decode"),
}

def amd_arch(name: str) -> str | None:
    """The gfx target of an AMD GPU named `name` (KNOWN_GPUS' last column), else None."""
    low = name.lower()
    return next((row.arch for row in KNOWN_GPUS if row.vendor == "amd" and re.search(row.pattern, low)), None)


# When a part is not in the table: a deliberately low figure so predictions err slow (said in the notes).
UNKNOWN_GPU_BANDWIDTH_GBS = {"nvidia": 300.0, "amd": 300.0, "intel": 200.0, "apple": 100.0}


def known_gpu(vendor: str, name: str) -> tuple[float, str, str, str] | None:
    """(bandwidth GB/s, tier, memory type, source) for a known part, else None."""
    low = name.lower()
    for row in KNOWN_GPUS:
        if row.vendor == vendor and re.search(row.pattern, low):
            return row.bandwidth_gbs, row.tier, row.memory, row.source
    return None


def apple_chip(name: str) -> str | None:
    """'Apple M3 Pro' / 'kHW_AppleM1Item' / 'Apple M4 Max (40-core GPU)' -> 'M3 Pro' / 'M1' / 'M4 Max'."""
    m = re.search(r"(?:Apple\s*)?(M\d+)(?:\s*(Pro|Max|Ultra))?", name)
    if not m:
        return None
    return m.group(1) + (f" {m.group(2)}" if m.group(2) else "")


def apple_bandwidth(chip: str, cores: int | None) -> tuple[float, str] | None:
    if cores is not None and (chip, cores) in APPLE_BANDWIDTH:
        return APPLE_BANDWIDTH[(chip, cores)]
    return APPLE_BANDWIDTH.get((chip, None))


def apple_bandwidth_share(name: str) -> float | None:
    """GPUSpec.bandwidth_share for an Apple GPU of this name (APPLE_BANDWIDTH_SHARE, by apple_chip); None: the chip
    reads its datasheet bandwidth."""
    share = APPLE_BANDWIDTH_SHARE.get(apple_chip(name) or "")
    return share[0] if share else None


def default_wired_fraction(memory_bytes: int) -> float:
    """Metal's default recommendedMaxWorkingSetSize share (profiles/hardware.yaml: ~2/3 up to 36 GB, 0.75 above)."""
    return 0.75 if memory_bytes > 36 * GIB else round(2 / 3, 4)


# ---------------------------------------------------------------------------------------------- parsers


def _num(text: str | None) -> float | None:
    if text is None:
        return None
    t = text.strip()
    t = re.sub(r"\s*(MiB|MB|GiB|%)$", "", t)
    if not t or t.startswith("[") or t.upper() in ("N/A", "NOT SUPPORTED"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def _cc(text: str | None) -> str | None:
    """A compute capability as GPUSpec takes it (major.minor); anything else a driver prints is left unknown rather
    than failing the whole detection."""
    return text if text and re.match(COMPUTE_CAPABILITY, text) else None


def _blank(text: str | None) -> str | None:
    if text is None:
        return None
    t = text.strip()
    return None if not t or t.startswith("[") or t.upper() == "N/A" else t


def parse_nvidia_smi_csv(text: str, fields: Sequence[str] = NVIDIA_QUERY_FIELDS) -> list[DetectedGPU]:
    """Rows of `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`.

    With a header line (plain `--format=csv`) the columns are taken from it, so recorded outputs of other queries
    parse too; values may carry units ("24564 MiB") or be "[N/A]" (unified-memory parts report no memory).
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    cols = list(fields)
    if lines and re.search(r"(^|,\s*)(name|gpu_name|memory\.total|compute_cap|driver_version)(\s*\[|\s*,|\s*$)", lines[0]):
        cols = [re.sub(r"\s*\[.*\]$", "", c.strip()).replace("gpu_name", "name") for c in lines[0].split(",")]
        lines = lines[1:]
    gpus = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(cols):
            # A name with a comma in it: glue the surplus back onto the name column.
            extra = len(parts) - len(cols)
            if extra > 0 and "name" in cols:
                i = cols.index("name")
                parts[i:i + extra + 1] = [", ".join(parts[i:i + extra + 1])]
            else:
                continue
        row = dict(zip(cols, parts))
        name = _blank(row.get("name"))
        if not name:
            continue
        total = _num(row.get("memory.total"))
        free = _num(row.get("memory.free"))
        gpus.append(DetectedGPU(
            vendor="nvidia", name=name,
            memory_bytes=int(total * MIB) if total else None,
            free_bytes=int(free * MIB) if free is not None else None,
            driver=_blank(row.get("driver_version")),
            compute_capability=_blank(row.get("compute_cap")),
            source="nvidia-smi",
        ))
    return gpus


def parse_rocm_smi_json(text: str) -> list[DetectedGPU]:
    """`rocm-smi --showproductname --showmeminfo vram --json`: {"card0": {"Card Series": ..., "VRAM Total Memory (B)": ...}}.

    ROCm 5 spells "Card series", ROCm 6 "Card Series"; keys are matched case-insensitively.
    """
    data = json.loads(text)
    gpus = []
    for card in sorted((k for k in data if k.lower().startswith("card")), key=lambda k: int(re.sub(r"\D", "", k) or 0)):
        entry = {k.lower(): v for k, v in data[card].items()}
        name = _blank(entry.get("card series")) or _blank(entry.get("card model")) or _blank(entry.get("device name"))
        total = _num(entry.get("vram total memory (b)"))
        used = _num(entry.get("vram total used memory (b)"))
        if not name:
            continue
        gpus.append(DetectedGPU(
            vendor="amd", name=name,
            memory_bytes=int(total) if total else None,
            free_bytes=int(total - used) if total and used is not None else None,
            arch=_blank(entry.get("gfx version")),
            driver=_blank(entry.get("driver version")),
            source="rocm-smi",
        ))
    return gpus


def parse_system_profiler_displays(text: str) -> list[dict[str, Any]]:
    """`system_profiler SPDisplaysDataType -json` -> [{name, vendor, cores}] for each GPU entry."""
    data = json.loads(text)
    out = []
    for item in data.get("SPDisplaysDataType", []):
        name = item.get("sppci_model") or item.get("_name") or ""
        cores = item.get("sppci_cores")
        vendor = str(item.get("spdisplays_vendor", ""))
        out.append({
            "name": name,
            "vendor": "apple" if ("apple" in vendor.lower() or apple_chip(name)) else vendor,
            "cores": int(cores) if cores and str(cores).isdigit() else None,
        })
    return out


def parse_sysctl_value(text: str, key: str | None = None) -> str | None:
    """Value of `sysctl -n key` (bare) or `sysctl key` / `sysctl -a` ("key: value") output."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if key:
        for ln in lines:
            if ln.startswith(key + ":") or ln.startswith(key + " ="):
                value = re.split(r"[:=]", ln, maxsplit=1)[1].strip()
                return value.split("->")[-1].strip()  # `sysctl key=N` echoes "key: old -> new"
        if len(lines) == 1 and ":" not in lines[0]:
            return lines[0]
        return None
    return lines[0] if lines else None


# ---------------------------------------------------------------------------------------------- probes


def probe_cpu_ram(env: ProbeEnv, facts: Facts) -> None:
    import psutil

    vm = psutil.virtual_memory()
    facts.memory_bytes = int(vm.total)
    facts.available_bytes = int(vm.available)
    facts.cores = psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or os.cpu_count() or 1
    facts.threads = psutil.cpu_count(logical=True) or os.cpu_count() or facts.cores
    m = env.machine.lower()
    facts.arch = "arm64" if m in ("arm64", "aarch64") else "x86_64"
    facts.os = {"Darwin": "macos", "Windows": "windows"}.get(env.system, "linux")
    facts.hostname = platform.node() or "host"
    facts.note(f"CPU/RAM: psutil ({facts.cores} cores, {facts.threads} threads, {vm.total / GIB:.2f} GiB RAM, "
               f"{vm.available / GIB:.2f} GiB available)")
    if env.system == "Linux":
        limit = env.read_or_none("/sys/fs/cgroup/memory.max")
        if limit and limit.strip().isdigit() and int(limit) < vm.total:
            facts.note(f"container: cgroup memory limit {int(limit) / GIB:.2f} GiB is below the host's "
                       f"{vm.total / GIB:.2f} GiB; plans use the host figure, keep the stack within the limit")


def probe_nvidia(env: ProbeEnv, facts: Facts) -> None:
    gpus: list[DetectedGPU] | None = None
    try:
        gpus = _nvml(env)
    except ProbeMissing:
        pass
    except Exception as exc:  # NVML present but failing: fall back to nvidia-smi, say so
        facts.note(f"NVIDIA: NVML failed ({type(exc).__name__}: {str(exc)[:120]}); trying nvidia-smi")
    if gpus is None:
        try:
            out = env.output(NVIDIA_SMI_CMD)
            gpus = parse_nvidia_smi_csv(out)
        except ProbeFailed as exc:
            if "compute_cap" not in str(exc):
                raise
            # Drivers before ~510 do not know compute_cap (github.com/huggingface/candle/issues/733): ask without it.
            fields = NVIDIA_QUERY_FIELDS[:-1]
            out = env.output(("nvidia-smi", "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"))
            gpus = parse_nvidia_smi_csv(out, fields)
    if not gpus:
        return
    _flag_unreachable_nvidia(env, facts, gpus)
    facts.gpus.extend(gpus)
    if sum(g.usable for g in gpus) >= 2:
        _nvidia_gpu_link(env, facts)


NVIDIA_TOPO_CMD = ("nvidia-smi", "topo", "-m")
NVIDIA_TOPO_P2P_CMD = ("nvidia-smi", "topo", "-p2p", "r")


def _topo_matrix(text: str) -> dict[str, dict[str, str]]:
    """The GPU x GPU cells of an `nvidia-smi topo` matrix (`topo -m`, `topo -p2p r`): {row GPU: {column GPU: cell}};
    the header row names the columns (GPU0 GPU1 ... then CPU/NUMA affinity columns, left out), the legend is
    skipped."""
    header: list[str] | None = None
    cells: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if header is None:
            if parts[0].startswith("GPU"):
                header = [p for p in parts if re.fullmatch(r"GPU\d+", p)]
            continue
        if re.fullmatch(r"GPU\d+", parts[0]) and len(parts) > len(header):
            cells[parts[0]] = {col: parts[1 + i] for i, col in enumerate(header)}
    return cells


def gpu_link_from_topo(topo_m: str | None, p2p_read: str | None) -> str | None:
    """The GPUs' link for tensor parallel (HardwareSpec.gpu_link) from `nvidia-smi topo -m` and `nvidia-smi topo
    -p2p r`: "nvlink" when every GPU pair is NV# in topo -m (bonded NVLinks; "NV12" on NVSwitch boards), else from
    the peer-read matrix "pcie-p2p" when every pair is OK and "pcie" when any is not (NS not supported, CNS chipset,
    GNS GPU, TNS topology, DR disabled by regkey, U unknown: GeForce drivers answer NS or CNS); None when neither
    matrix could be read."""
    m = _topo_matrix(topo_m or "")
    pairs = [m[a][b] for a in m for b in m[a] if a != b and b in m]
    if pairs and all(re.fullmatch(r"NV\d+", c) for c in pairs):
        return "nvlink"
    r = _topo_matrix(p2p_read or "")
    pairs = [r[a][b] for a in r for b in r[a] if a != b and b in r]
    if not pairs:
        return None
    return "pcie-p2p" if all(c == "OK" for c in pairs) else "pcie"


def _nvidia_gpu_link(env: ProbeEnv, facts: Facts) -> None:
    """How several NVIDIA GPUs reach each other (gpu_link_from_topo); a topo that fails leaves it to the planner's
    inference (speed.gpu_link), with a note."""
    outs: list[str | None] = []
    for cmd in (NVIDIA_TOPO_CMD, NVIDIA_TOPO_P2P_CMD):
        try:
            outs.append(env.output(cmd))
        except Exception as exc:  # ProbeMissing, ProbeFailed, or an odd answer: never fatal
            outs.append(None)
            facts.note(f"NVIDIA: `{' '.join(cmd)}` gave nothing ({str(exc)[:120]})")
    facts.gpu_link = gpu_link_from_topo(*outs)
    if facts.gpu_link:
        facts.note(f"GPU link {facts.gpu_link} (nvidia-smi topo): tensor parallel's all-reduces are planned at its "
                   "latency")


def _nvml(env: ProbeEnv) -> list[DetectedGPU]:
    try:
        nv = env.import_module("pynvml")  # from the nvidia-ml-py package
    except ImportError:
        raise ProbeMissing("nvidia-ml-py not installed") from None
    nv.nvmlInit()
    try:
        driver = nv.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        gpus = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                major, minor = nv.nvmlDeviceGetCudaComputeCapability(h)
                cc = f"{major}.{minor}"
            except Exception:
                cc = None
            gpus.append(DetectedGPU("nvidia", name, int(mem.total), int(mem.free), driver, cc, source="NVML"))
        return gpus
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def _flag_unreachable_nvidia(env: ProbeEnv, facts: Facts, gpus: list[DetectedGPU]) -> None:
    """The driver answers but CUDA cannot open the GPU: a container without the device nodes, or WSL."""
    if env.system != "Linux":
        return
    nodes = [p for p in env.glob("/dev/nvidia*") if re.search(r"/dev/nvidia\d+$", p)]
    if nodes:
        return
    if env.glob("/dev/dxg"):
        facts.note("WSL2: NVIDIA GPU reached through /dev/dxg (no /dev/nvidia*); CUDA works there, but check "
                   "`nvidia-smi` inside WSL and the engine's WSL support before serving")
        return
    for g in gpus:
        g.usable = False
    facts.note("NVIDIA: the driver reports " + ", ".join(g.name for g in gpus) + " but /dev/nvidia[0-9]* is missing, "
               "so CUDA cannot use it here (a container started without `--gpus all` / the NVIDIA runtime?); "
               "GPU left out of the profile")


def probe_amd(env: ProbeEnv, facts: Facts) -> None:
    gpus: list[DetectedGPU] | None = None
    tried = []
    try:
        gpus = _amdsmi(env)
    except ProbeMissing:
        tried.append("amdsmi not installed")
    except Exception as exc:
        tried.append(f"amdsmi failed ({type(exc).__name__})")
    if not gpus:
        try:
            gpus = parse_rocm_smi_json(env.output(ROCM_SMI_CMD))
        except (ProbeMissing, ProbeFailed, ValueError) as exc:
            tried.append(str(exc) if not isinstance(exc, ValueError) else "rocm-smi gave no JSON")
    if not gpus and env.system == "Linux":
        gpus = _amd_sysfs(env)
    if not gpus:
        if env.which("rocm-smi") or any("failed" in t for t in tried):
            facts.note("AMD: no GPU found (" + "; ".join(tried) + ")")
        return
    small = [g for g in gpus if g.memory_bytes is not None and g.memory_bytes < GIB]
    for g in small:
        facts.note(f"AMD: {g.name} has {g.memory_bytes / MIB:.0f} MiB of dedicated memory (an integrated GPU's "
                   "carve-out); left out of the profile")
    gpus = [g for g in gpus if g not in small]
    if gpus and env.system == "Linux" and not env.glob("/dev/kfd"):
        facts.note("AMD: /dev/kfd is missing, so ROCm (vLLM, llama.cpp HIP) cannot use the GPU here; "
                   "llama.cpp's Vulkan backend may still work (pass --device /dev/kfd --device /dev/dri to a container)")
    facts.gpus.extend(gpus)


def _amdsmi(env: ProbeEnv) -> list[DetectedGPU]:
    try:
        amd = env.import_module("amdsmi")
    except ImportError:
        raise ProbeMissing("amdsmi not installed") from None
    amd.amdsmi_init()
    try:
        gpus = []
        for h in amd.amdsmi_get_processor_handles():
            asic = amd.amdsmi_get_gpu_asic_info(h)
            vram = amd.amdsmi_get_gpu_vram_usage(h)  # MB
            total = int(vram["vram_total"]) * MIB
            gpus.append(DetectedGPU("amd", str(asic.get("market_name") or "AMD GPU"), total,
                                    total - int(vram["vram_used"]) * MIB, source="amdsmi"))
        return gpus
    finally:
        try:
            amd.amdsmi_shut_down()
        except Exception:
            pass


def _drm_devices(env: ProbeEnv, vendor_id: str) -> list[str]:
    devs = []
    for card in sorted(env.glob("/sys/class/drm/card*")):
        if not re.search(r"/card\d+$", card):
            continue
        vendor = env.read_or_none(f"{card}/device/vendor")
        if vendor and vendor.strip().lower() == vendor_id:
            devs.append(card)
    return devs


def _amd_sysfs(env: ProbeEnv) -> list[DetectedGPU]:
    gpus = []
    for card in _drm_devices(env, "0x1002"):
        total = _num(env.read_or_none(f"{card}/device/mem_info_vram_total"))
        used = _num(env.read_or_none(f"{card}/device/mem_info_vram_used"))
        device = (env.read_or_none(f"{card}/device/device") or "").strip()
        name = (env.read_or_none(f"{card}/device/product_name") or "").strip() or f"AMD GPU (PCI device {device or '?'})"
        if not total:
            continue
        gpus.append(DetectedGPU("amd", name, int(total), int(total - used) if used is not None else None,
                                source="sysfs mem_info_vram_total"))
    return gpus


# PCI device ids of discrete Arc cards (linux drivers/gpu/drm/i915 and xe pciids tables).
INTEL_ARC_IDS = {"0x56a0": "Arc A770", "0x56a1": "Arc A750", "0x56a5": "Arc A380", "0x56a6": "Arc A310",
                 "0xe20b": "Arc B580", "0xe20c": "Arc B570"}


def probe_intel(env: ProbeEnv, facts: Facts) -> None:
    if env.system != "Linux":
        return
    for card in _drm_devices(env, "0x8086"):
        device = (env.read_or_none(f"{card}/device/device") or "").strip().lower()
        name = INTEL_ARC_IDS.get(device)
        lmem = None
        for path in (f"{card}/lmem_total_bytes", f"{card}/device/tile0/vram0/size",
                     f"{card}/device/lmem_total_bytes"):
            lmem = _num(env.read_or_none(path))
            if lmem:
                break
        if not name and not lmem:
            continue  # an integrated GPU: shares system RAM, not a serving target
        if not lmem:
            facts.note(f"Intel: {name} ({card}) found, but its memory size is not exposed in sysfs (no lmem); "
                       "describe it inline (memory_gib) to use it")
            continue
        facts.gpus.append(DetectedGPU("intel", f"Intel {name or 'GPU (PCI ' + device + ')'}", int(lmem),
                                      source="sysfs lmem"))


def probe_apple(env: ProbeEnv, facts: Facts) -> None:
    if env.system != "Darwin":
        return
    memsize = int(parse_sysctl_value(env.output(("sysctl", "-n", "hw.memsize")), "hw.memsize") or 0)
    brand = parse_sysctl_value(env.output(("sysctl", "-n", "machdep.cpu.brand_string")), "machdep.cpu.brand_string")
    facts.cpu_name = brand
    if memsize:
        facts.memory_bytes = memsize
        facts.note(f"Apple: unified memory {memsize / GIB:g} GiB from `sysctl hw.memsize`")
    displays: list[dict[str, Any]] = []
    try:
        displays = parse_system_profiler_displays(env.output(SYSTEM_PROFILER_CMD))
    except (ProbeFailed, ProbeMissing, ValueError) as exc:
        facts.note(f"Apple: system_profiler gave nothing ({exc}); GPU name taken from the CPU brand string")
    gpu = next((d for d in displays if d["vendor"] == "apple"), None)
    name = (gpu or {}).get("name") or brand or ""
    chip = apple_chip(name) or apple_chip(brand or "")
    if not chip or not memsize:
        facts.note(f"Apple: not Apple silicon ({brand!r}); no unified-memory GPU")
        return
    cores = (gpu or {}).get("cores")
    facts.gpus.append(DetectedGPU("apple", f"Apple {chip}" + (f" ({cores}-core GPU)" if cores else ""), memsize,
                                  cores=cores, source="system_profiler/sysctl", unified=True))
    wired = None
    try:
        raw = parse_sysctl_value(env.output(("sysctl", "iogpu.wired_limit_mb")), "iogpu.wired_limit_mb")
        wired = int(raw) if raw and raw.isdigit() else None
    except (ProbeFailed, ProbeMissing) as exc:
        facts.note(f"Apple: iogpu.wired_limit_mb unreadable ({exc})")
    if wired:
        facts.wired_limit_fraction = round(min(1.0, wired * MIB / memsize), 4)
        facts.note(f"Apple: GPU wired-memory cap {wired} MiB from `sysctl iogpu.wired_limit_mb` "
                   f"= {facts.wired_limit_fraction:g} of RAM")
    else:
        facts.wired_limit_fraction = default_wired_fraction(memsize)
        facts.note(f"Apple: iogpu.wired_limit_mb is {'0 (macOS default)' if wired == 0 else 'unknown'}; GPU may wire "
                   f"{facts.wired_limit_fraction:g} of RAM (Metal's default recommendedMaxWorkingSetSize share, "
                   "table value; raise with `sudo sysctl iogpu.wired_limit_mb=N`)")


PROBES: tuple[Probe, ...] = (probe_cpu_ram, probe_nvidia, probe_amd, probe_intel, probe_apple)


# ---------------------------------------------------------------------------------------------- bandwidth


def measure_memory_bandwidth(seconds_budget: float = 0.6, size_mib: int = 256, repeats: int = 5) -> float:
    """Best-of-N copy of a large array with numpy; GB/s counting the read and the write (2 x size per copy)."""
    import numpy as np

    src = np.ones(size_mib * MIB // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first
    best = float("inf")
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > seconds_budget:
            break
    return round(2 * src.nbytes / best / 1e9, 1)


def default_bandwidth_cache() -> str:
    """$STACKGEN_USER_CACHE, else $XDG_CACHE_HOME/stackgen, else ~/.cache/stackgen."""
    base = os.environ.get("STACKGEN_USER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "stackgen")
    return os.path.join(base, "memory-bandwidth.json")


def _machine_key(env: ProbeEnv, facts: Facts) -> str:
    """A measurement belongs to one machine shape: same CPU, core count and RAM size."""
    gib = round((facts.memory_bytes or 0) / 2**30)
    return f"{env.machine}|{facts.cpu_name or '?'}|{facts.cores}|{facts.threads}|{gib}GiB"


def _cached_bandwidth(env: ProbeEnv, facts: Facts) -> float | None:
    if not env.bandwidth_cache:
        return None
    try:
        data = datafile.load_json(env.bandwidth_cache, "the bandwidth cache", "")
        if data.get("machine") == _machine_key(env, facts):
            value = float(data["memory_bandwidth_gbs"])
            return value if value > 0 else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no or unreadable cache: the table value applies
    return None


def _store_bandwidth(env: ProbeEnv, facts: Facts, gbs: float) -> None:
    if not env.bandwidth_cache:
        return
    try:
        os.makedirs(os.path.dirname(env.bandwidth_cache), exist_ok=True)
        from pathlib import Path

        from stackgen.run.state import write_new

        write_new(Path(env.bandwidth_cache), json.dumps({"machine": _machine_key(env, facts),
                                                         "memory_bandwidth_gbs": gbs}))
    except OSError as exc:
        facts.note(f"memory bandwidth: could not cache the measurement ({exc.strerror or exc})")


def _memory_bandwidth(env: ProbeEnv, facts: Facts) -> None:
    if facts.memory_bandwidth_gbs is not None:
        return
    apple = next((g for g in facts.gpus if g.vendor == "apple"), None)
    if apple is not None:
        bw = apple_bandwidth(apple_chip(apple.name) or "", apple.cores)
        if bw:
            facts.memory_bandwidth_gbs = bw[0]
            facts.note(f"memory bandwidth {bw[0]:g} GB/s: table value for the unified memory ({bw[1]})")
            return
    if env.measure:
        try:
            facts.memory_bandwidth_gbs = measure_memory_bandwidth()
            facts.note(f"memory bandwidth {facts.memory_bandwidth_gbs:g} GB/s: measured (numpy copy of 256 MiB, "
                       "best of 5, read+write bytes)")
            _store_bandwidth(env, facts, facts.memory_bandwidth_gbs)
            return
        except Exception as exc:
            facts.note(f"memory bandwidth: measurement failed ({type(exc).__name__}: {exc}); using the table value")
    cached = _cached_bandwidth(env, facts)
    if cached is not None:
        facts.memory_bandwidth_gbs = cached
        facts.note(f"memory bandwidth {cached:g} GB/s: measured earlier on this machine by `stackgen detect "
                   f"--measure` (cached in {env.bandwidth_cache})")
        return
    facts.memory_bandwidth_gbs = DEFAULT_MEMORY_BANDWIDTH_GBS
    facts.note(f"memory bandwidth {DEFAULT_MEMORY_BANDWIDTH_GBS:g} GB/s: table value (conservative dual-channel "
               "DDR4 figure; the DDR generation is rarely knowable), not measured: run `stackgen detect --measure`")


# ---------------------------------------------------------------------------------------------- assembly


def _gpu_spec(g: DetectedGPU, notes: list[str], memory_bandwidth: float | None) -> GPUSpec | None:
    if g.memory_bytes is None:
        notes.append(f"{g.vendor}: {g.name}: the driver reports no memory size; left out (describe it inline)")
        return None
    share = None
    if g.vendor == "apple":
        chip = apple_chip(g.name) or ""
        bw = apple_bandwidth(chip, g.cores)
        bandwidth, tier = (bw[0], "consumer") if bw else (memory_bandwidth or UNKNOWN_GPU_BANDWIDTH_GBS["apple"], "consumer")
        memory: str | None = "lpddr"
        known_share = APPLE_BANDWIDTH_SHARE.get(chip) if bw else None  # (share, source)
        if not bw:
            notes.append(f"{g.name}: bandwidth unknown for this chip; {bandwidth:g} GB/s is a conservative guess")
        elif known_share:
            share = known_share[0]
            notes.append(f"{g.name}: decodes at {share:g} of its {bandwidth:g} GB/s ({known_share[1]})")
    else:
        known = known_gpu(g.vendor, g.name)
        if known:
            bandwidth, tier, memory, source = known
            notes.append(f"{g.name}: bandwidth {bandwidth:g} GB/s from the known-parts table ({source})")
        else:
            bandwidth, tier, memory = UNKNOWN_GPU_BANDWIDTH_GBS[g.vendor], "consumer", None
            notes.append(f"{g.name}: not in the known-parts table; bandwidth {bandwidth:g} GB/s is a conservative "
                         "guess (describe it inline for better speed predictions)")
    name = re.sub(r"^NVIDIA\s+(?=GeForce|RTX|Tesla|Quadro)", "", g.name).strip()
    return GPUSpec(
        vendor=g.vendor, name=name[:4096], memory_gib=round(g.memory_bytes / GIB, 2), bandwidth_gbs=float(bandwidth),
        bandwidth_share=share, tier=tier, memory_type=memory, compute_capability=_cc(g.compute_capability),
        arch=g.arch or (amd_arch(g.name) if g.vendor == "amd" else None),
        unified=g.unified,
        interconnect_gbs=float(bandwidth) if g.unified else None,
    )


def build_host(facts: Facts) -> HostFacts:
    notes = list(facts.notes)
    specs: list[GPUSpec] = []
    for i, g in enumerate(facts.gpus):
        where = f"GPU {i} {g.name}: {g.memory_bytes / GIB:.2f} GiB" if g.memory_bytes else f"GPU {i} {g.name}"
        extra = []
        if g.free_bytes is not None:
            extra.append(f"{g.free_bytes / GIB:.2f} GiB free now")
        if g.driver:
            extra.append(f"driver {g.driver}")
        if g.compute_capability:
            extra.append(f"compute capability {g.compute_capability}")
        notes.append(f"{where} via {g.source}" + (f" ({', '.join(extra)})" if extra else "")
                     + ("" if g.usable else " - NOT usable here, left out"))
        if not g.usable:
            continue
        spec = _gpu_spec(g, notes, facts.memory_bandwidth_gbs)
        if spec is None:
            continue
        same = next((j for j, s in enumerate(specs) if s.model_copy(update={"count": 1}) == spec), None)
        if same is None:
            specs.append(spec)
        else:
            specs[same] = specs[same].model_copy(update={"count": specs[same].count + 1})
    if facts.memory_bytes is None or facts.cores is None:
        raise DetectError("could not read this machine's RAM and CPU count (psutil failed); "
                          "describe the hardware inline or use a built-in profile")
    hw = HardwareSpec(
        description=f"this machine ({facts.hostname or 'host'})"[:200],
        gpus=tuple(specs),
        memory_gib=round(facts.memory_bytes / GIB, 2),
        memory_bandwidth_gbs=float(facts.memory_bandwidth_gbs or DEFAULT_MEMORY_BANDWIDTH_GBS),
        cpu=CPUSpec(cores=facts.cores, threads=facts.threads, arch=facts.arch),  # type: ignore[arg-type]
        os=facts.os,  # type: ignore[arg-type]
        wired_limit_fraction=facts.wired_limit_fraction,
        gpu_link=facts.gpu_link,  # type: ignore[arg-type]
    )
    return HostFacts(hw, facts.available_bytes, tuple(notes))


def detect_host(env: ProbeEnv | None = None, probes: Sequence[Probe] = PROBES, *, measure: bool = False) -> HostFacts:
    """Run every probe in order; a probe that is missing, fails or hangs becomes a note, never an error."""
    env = env or ProbeEnv(measure=measure)
    if measure and not env.measure:
        env = dataclasses.replace(env, measure=True)
    facts = Facts(os={"Darwin": "macos", "Windows": "windows"}.get(env.system, "linux"))
    for probe in probes:
        label = probe.__name__.removeprefix("probe_")
        try:
            probe(env, facts)
        except ProbeMissing as exc:
            if label != "apple":
                facts.note(f"{label}: skipped ({exc})")
        except ProbeFailed as exc:
            facts.note(f"{label}: {exc}")
        except Exception as exc:  # a bug or an odd machine: never fatal
            facts.note(f"{label}: probe failed ({type(exc).__name__}: {str(exc)[:160]})")
    _memory_bandwidth(env, facts)
    if facts.memory_bytes is None or facts.cores is None:
        # psutil missing or broken: os-level fallbacks so detection still yields a profile
        facts.cores = facts.cores or os.cpu_count() or 1
        facts.threads = facts.threads or facts.cores
        if facts.memory_bytes is None:
            meminfo = env.read_or_none("/proc/meminfo") or ""
            m = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
            if m:
                facts.memory_bytes = int(m.group(1)) * 1024
                facts.note("RAM: /proc/meminfo MemTotal (psutil unavailable)")
    return build_host(facts)


__all__ = [
    "APPLE_BANDWIDTH", "DetectError", "DetectedGPU", "Facts", "KNOWN_GPUS", "NVIDIA_SMI_CMD", "PROBES", "ProbeEnv",
    "ROCM_SMI_CMD", "SYSTEM_PROFILER_CMD", "apple_chip", "build_host", "detect_host", "known_gpu",
    "measure_memory_bandwidth", "parse_nvidia_smi_csv", "parse_rocm_smi_json", "parse_system_profiler_displays",
    "parse_sysctl_value", "probe_amd", "probe_apple", "probe_cpu_ram", "probe_intel", "probe_nvidia", "run_command",
]
