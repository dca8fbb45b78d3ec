"""Regenerates tests/tools/vendor/podman-quadlet/container-keys.json from a podman checkout: the [Container] keys
Quadlet's generator accepts (it fails a unit with any other key: "unsupported key"), per release. Usage:
    python tests/tools/podman_quadlet_keys.py /path/to/podman/repo v4.9.0 v5.0.0 > .../container-keys.json
The keys come from pkg/systemd/quadlet/quadlet.go: the `supportedContainerKeys` map (4.x) or the Container group's
SupportedKeys (5.x), with each Key* constant resolved to its string."""

from __future__ import annotations

import json
import re
import subprocess
import sys


def show(repo: str, ref: str, path: str) -> str:
    r = subprocess.run(["git", "-C", repo, "show", f"{ref}:{path}"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


def container_keys(repo: str, ref: str) -> list[str]:
    src = show(repo, ref, "pkg/systemd/quadlet/quadlet.go") + show(repo, ref, "pkg/systemd/quadlet/quadlet_common.go")
    consts = dict(re.findall(r'\b(Key\w+)\s*=\s*"([^"]+)"', src))
    m = (re.search(r"supportedContainerKeys = map\[string\]bool\{(.*?)\n\t\}", src, re.S)
         or re.search(r"ContainerGroup: \{.*?SupportedKeys: map\[string\]bool\{(.*?)\n\t\t\t\}", src, re.S))
    if m is None:
        raise SystemExit(f"{ref}: no Container key table found")
    return sorted(consts[k] for k in re.findall(r"(Key\w+):\s*true", m.group(1)))


def main(repo: str, refs: list[str]) -> None:
    commit = {ref: subprocess.run(["git", "-C", repo, "rev-parse", f"{ref}^{{commit}}"], capture_output=True,
                                  text=True).stdout.strip() for ref in refs}
    out = {"source": "containers/podman pkg/systemd/quadlet/quadlet.go (Apache-2.0)",
           "releases": {ref: {"commit": commit[ref], "keys": container_keys(repo, ref)} for ref in refs}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
