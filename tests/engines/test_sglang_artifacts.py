"""SGLang's golden artifacts (tests/golden/sglang-*/expected: one GPU, and tensor parallel 4) pass the validators
the other targets' tests use: systemd-analyze verify + security, the compose-spec schema and docker-compose config,
kubernetes-validate in strict mode. tests/test_golden.py guards their bytes; this file guards that they are valid,
and that the key never appears in them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stackgen.render.targets.kubernetes import KUBERNETES_VERSION
from tools.which import need
from tools.compose_v1 import compose_v1

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = {"sglang-agents-h100": ("agents", "AGENTS_API_KEY", 1), "sglang-tp4-70b": ("rag", "RAG_API_KEY", 4)}
ANALYZE = shutil.which("systemd-analyze")




def expected(case: str) -> Path:
    return GOLDEN / case / "expected"


@pytest.mark.parametrize("case", sorted(CASES))
def test_systemd_unit_verifies_and_is_hardened(case, tmp_path):
    if ANALYZE is None:
        need("systemd-analyze")
    (unit,) = (expected(case) / "systemd").glob("*.service")
    # verify looks the ExecStart binary up: python3 is the engine's binary (the interpreter sglang is installed in)
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text())
    r = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--threshold=20", str(copy)], capture_output=True,
                       text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert m and float(m.group(1)) <= 2.0, r.stdout[-1500:]
    text = unit.read_text()
    assert "EnvironmentFile=" in text and "SGLANG_API_KEY=<key>" in text  # the key comes from a root-only file
    exec_start = text.split("ExecStart=", 1)[1].split("\n", 1)[0]
    assert ' "--api-key" ' not in exec_start  # no key argument: the launcher adds it inside the process


@pytest.mark.parametrize("case", sorted(CASES))
def test_compose_file_is_valid_and_reads_the_key_from_the_environment(case, tmp_path):
    name, key_var, gpus = CASES[case]
    path = expected(case) / "compose" / "compose.yaml"
    proc = subprocess.run([need("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {**os.environ, key_var: "canary-c0ffee"}
    proc = compose_v1(path, "config", env=env)
    assert proc.returncode == 0, proc.stderr
    svc = yaml.safe_load(proc.stdout)["services"][name]
    assert svc["environment"]["SGLANG_API_KEY"] == "canary-c0ffee"  # interpolated at `up`, never written
    assert "canary-c0ffee" not in path.read_text()
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["count"] == gpus
    assert svc["command"][:2] == ["python3", "-c"] and svc["image"].startswith("lmsysorg/sglang:v0.5.23-")
    env.pop(key_var)
    proc = compose_v1(path, "config", "-q", env=env)
    assert proc.returncode != 0 and f"set {key_var} to the API key" in proc.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_kubernetes_manifests_validate_strictly(case):
    kv = pytest.importorskip("kubernetes_validate")
    name, _, gpus = CASES[case]
    docs = list(yaml.safe_load_all((expected(case) / "kubernetes" / f"{name}.yaml").read_text()))
    assert [d["kind"] for d in docs][:3] == ["PersistentVolumeClaim", "Service", "Deployment"]
    for doc in docs:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    (c,) = docs[2]["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    key = next(e for e in c["env"] if e["name"] == "SGLANG_API_KEY")
    assert "secretKeyRef" in key["valueFrom"]  # from a Secret, not a literal


def test_the_tp_case_runs_tensor_parallel_4_and_the_single_gpu_case_does_not():
    tp4 = (expected("sglang-tp4-70b") / "rag" / "run.sh").read_text()
    one = (expected("sglang-agents-h100") / "agents" / "run.sh").read_text()
    assert "--tp-size 4" in tp4 and "--tp-size" not in one
    for text in (tp4, one):
        assert "--mem-fraction-static" in text and "--max-running-requests" in text and "sglang.launch_server" in text
