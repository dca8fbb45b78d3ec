"""Where local weights are, as each artifact must name them so a committed tree works in any clone, from any cwd.

- The stack names local weights relative to its own folder (or absolutely). Artifacts never embed the folder the
  checkout happens to live in: run.sh changes to the stack's folder at run time and keeps the stack-relative path;
  compose and the script target's Ollama Modelfile name the file relative to their own folder.
- A systemd unit runs on a target host with no checkout: relative weights go to `serve.model_dir` there
  (default /var/lib/stackgen/models), and the unit says how to copy them.
- A path the stack gives absolutely is a statement about the host and stays as written.
All computations use the stack file and the output folder as given (made absolute without resolving symlinks), so
rendering from another cwd, or in another clone, gives the same bytes.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path, PurePosixPath

from stackgen.plan.plan import ServicePlan

# A split GGUF (llama-gguf-split) is named <prefix>-00001-of-0000N.gguf. llama.cpp is given the first part and opens
# the others beside it by name: llama-model-loader.cpp reads `split.count` from the first part, takes the prefix with
# llama_split_prefix and opens llama_split_path(prefix, i, n) = "%s-%05d-of-%05d.gguf" for each i (llama.cpp
# src/llama.cpp). Every artifact that installs, allows, mounts or copies the weights must cover all N parts.
_FIRST_SPLIT = re.compile(r"-00001-of-(\d{5})\.gguf$")


def local_weights(sp: ServicePlan) -> str | None:
    """Local weights as the stack names them: a normalized POSIX path relative to the stack's folder, an absolute
    path the stack wrote, or None for a registry reference. A catalog model without any source is expected under
    models/ next to the stack (resolve.default_model_ref)."""
    if sp.model.path:
        ref = sp.spec.model  # a backslash is a file-name character here, not a Windows separator
        return ref if PurePosixPath(ref).is_absolute() else posixpath.normpath(ref)
    if sp.model_ref.startswith("models/"):
        return sp.model_ref
    return None


def weight_files(weights: str) -> list[str]:
    """Every file of local weights named `weights` (a path as local_weights gives it): all parts of a split GGUF, in
    order and in the first part's folder, else the one file or folder. The first is the one the engine is given."""
    m = _FIRST_SPLIT.search(weights)
    if m is None or int(m.group(1)) < 2:
        return [weights]
    prefix = weights[:m.start()]
    count = int(m.group(1))
    return [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def output_folder(stack_path: str | Path, out_dir: str, *parts: str) -> str:
    """A folder of the rendered tree (RenderContext.out_dir is relative to the stack's folder), absolute."""
    return os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(stack_path)), out_dir, *parts))


def relative_to_folder(stack_folder: str | Path, weights: str, folder: str | Path) -> str:
    """`weights` (stack-relative or absolute) as seen from `folder` (both folders relative to the same cwd, or
    absolute). Gives ./x or ../x, or the absolute path unchanged."""
    if PurePosixPath(weights).is_absolute():
        return weights
    target = os.path.join(os.path.abspath(stack_folder), weights)
    rel = Path(os.path.relpath(target, os.path.abspath(folder))).as_posix()
    return rel if rel.startswith("../") else f"./{rel}"


def installed_path(weights: str, model_dir: str) -> str:
    """Where a unit on the target host reads `weights`: stack-relative weights under model_dir by their name."""
    if PurePosixPath(weights).is_absolute():
        return weights
    return posixpath.join(model_dir, PurePosixPath(weights).name)
