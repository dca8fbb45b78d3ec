"""`stackgen detect` reads how several NVIDIA GPUs reach each other (HardwareSpec.gpu_link, the link tensor parallel's
all-reduces are planned at: speed.ALLREDUCE_US) from `nvidia-smi topo -m` and `nvidia-smi topo -p2p r`. The matrices
below are public outputs (sources beside each), trimmed to their matrix and legend."""

from __future__ import annotations

from test_detect import NVIDIA_SMI_CMD, FakeHost, _rtx4090_rows, gpu_only
from stackgen.host.detect import NVIDIA_TOPO_CMD, NVIDIA_TOPO_P2P_CMD, gpu_link_from_topo, probe_nvidia

# 2 x RTX 2080 Ti behind one PCIe switch, P2P not supported (github.com/Anthony-Hoo/Anthony-Hoo.github.io
# posts/AutoDL_Multi-GPU_Interconnection_Test.md: `nvidia-smi topo -m` and `nvidia-smi topo -p2p p`)
TOPO_PIX = """        GPU0    GPU1    CPU Affinity    NUMA Affinity   GPU NUMA ID
GPU0     X      PIX     24-47,72-95     1               N/A
GPU1    PIX      X      24-47,72-95     1               N/A

Legend:

  X    = Self
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks
"""
P2P_NS = """        GPU0    GPU1
 GPU0   X       NS
 GPU1   NS      X

Legend:

  X    = Self
  OK   = Status Ok
  NS   = Not supported
"""
# 2 x RTX 3090 with a patched driver: PHB, peer access OK (github.com/noonghunna/club-3090 issue 922, topo -m and
# topo -p2p)
TOPO_PHB = """\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID
GPU0\t X \tPHB\t0-31\t0\t\tN/A
GPU1\tPHB\t X \t0-31\t0\t\tN/A
"""
P2P_OK = """ \tGPU0\tGPU1\t
 GPU0\tX\tOK\t
 GPU1\tOK\tX\t
"""
# 4 x V100 SXM2 on NVLink with a NIC column (github.com/NVIDIA/nccl-tests issue 68, `nvidia-smi topo -m`)
TOPO_NV2 = """\tGPU0\tGPU1\tGPU2\tGPU3\tmlx5_0\tCPU Affinity\tNUMA Affinity
GPU0\t X \tNV2\tNV2\tNV2\tNODE\t0,2,4,6,8,10\t0
GPU1\tNV2\t X \tNV2\tNV2\tNODE\t0,2,4,6,8,10\t0
GPU2\tNV2\tNV2\t X \tNV2\tNODE\t0,2,4,6,8,10\t0
GPU3\tNV2\tNV2\tNV2\t X \tNODE\t0,2,4,6,8,10\t0
mlx5_0\tNODE\tNODE\tNODE\tNODE\t X \t\t
"""


def test_every_pair_on_nvlink_is_nvlink():
    assert gpu_link_from_topo(TOPO_NV2, None) == "nvlink"
    assert gpu_link_from_topo(TOPO_NV2, P2P_NS) == "nvlink"


def test_one_pair_off_nvlink_is_not_nvlink():
    """A 2 + 2 box (two NVLink pairs over PCIe between them) is not fully NVLink: the peer matrix decides."""
    mixed = TOPO_NV2.replace("GPU0\t X \tNV2\tNV2\tNV2", "GPU0\t X \tNV2\tSYS\tNV2")
    assert gpu_link_from_topo(mixed, P2P_OK) == "pcie-p2p"
    assert gpu_link_from_topo(mixed, None) is None


def test_pcie_with_peer_access_and_without():
    assert gpu_link_from_topo(TOPO_PHB, P2P_OK) == "pcie-p2p"
    assert gpu_link_from_topo(TOPO_PIX, P2P_NS) == "pcie"
    for cell in ("CNS", "GNS", "TNS", "DR", "U"):
        assert gpu_link_from_topo(TOPO_PHB, P2P_OK.replace("X\tOK", f"X\t{cell}", 1)) == "pcie"


def test_nothing_readable_is_unknown():
    assert gpu_link_from_topo(None, None) is None
    assert gpu_link_from_topo("", "No devices were found\n") is None


def test_detect_puts_the_link_in_the_hardware():
    host = FakeHost({NVIDIA_SMI_CMD: (0, _rtx4090_rows(2), ""), NVIDIA_TOPO_CMD: (0, TOPO_PIX, ""),
                     NVIDIA_TOPO_P2P_CMD: (0, P2P_NS, "")}, paths=["/dev/nvidia0", "/dev/nvidia1"])
    facts = gpu_only(host.env(), probe_nvidia)
    assert facts.hardware.gpu_link == "pcie"
    assert NVIDIA_TOPO_CMD in host.calls and NVIDIA_TOPO_P2P_CMD in host.calls
    assert any("GPU link pcie" in n for n in facts.notes)


def test_one_gpu_reads_no_topology_and_a_failing_topo_leaves_it_unknown():
    one = FakeHost({NVIDIA_SMI_CMD: (0, _rtx4090_rows(1), "")}, paths=["/dev/nvidia0"])
    facts = gpu_only(one.env(), probe_nvidia)
    assert facts.hardware.gpu_link is None and one.calls == [NVIDIA_SMI_CMD]
    bad = FakeHost({NVIDIA_SMI_CMD: (0, _rtx4090_rows(2), ""), NVIDIA_TOPO_CMD: (9, "", "topo: not supported"),
                    NVIDIA_TOPO_P2P_CMD: (9, "", "")}, paths=["/dev/nvidia0", "/dev/nvidia1"])
    facts = gpu_only(bad.env(), probe_nvidia)
    assert facts.hardware.gpu_link is None and facts.hardware.gpus[0].count == 2
    assert any("nvidia-smi topo -m" in n for n in facts.notes)
