"""The architecture's two rules, read from the source with `ast` (nothing is imported):

(a) The engine owns its facts: no module outside `stackgen/engines/` names an engine. Every engine name (each
    registered engine's `name`, and the names of its binary and module) is looked for as a string constant; the
    only exemptions are the data tables listed in ALLOWED, each by module and top-level symbol.
(b) No import cycles among stackgen's modules (module-level imports only: an import inside a function or under
    `if TYPE_CHECKING:` runs later, or never, and is how a cycle is legitimately broken).
"""

from __future__ import annotations

import ast
from pathlib import Path

from stackgen import engines

PKG = Path(__file__).resolve().parent.parent / "stackgen"

# (module, top-level symbol): data that names engines by design.
ALLOWED = {
    # The decision table: which engines each hardware x workload row prefers, in order, with reasons.
    ("stackgen/plan/resolve.py", "DECISION_TABLE"),
    # The decision table's reasons: why an engine that could serve the model ranked below the chosen one.
    ("stackgen/plan/resolve.py", "_ranked_below"),
    # The multi-node decision (docs/multinode.md): which engines split one model over machines, in which order,
    # and what every node must be for each: a second decision table, data like the first.
    ("stackgen/plan/resolve.py", "MULTINODE_TABLE"),
    # The decode model's fitted constants per backend (cited public figures), keyed as the fits name them.
    ("stackgen/plan/speed.py", "BACKENDS"),
    # The TTFT check per backend (public prefill points and their largest error), keyed like BACKENDS.
    ("stackgen/plan/speed.py", "PREFILL_CHECK"),
    # Names of data that happen to equal an engine's: the Ollama registry as a model source, the catalog's MLX key.
    ("stackgen/models/facts.py", "OLLAMA_REGISTRY"),
    ("stackgen/models/facts.py", "MLX_SIZES_KEY"),
}


def _engine_words() -> set[str]:
    words = {"llamacpp", "llama-server", "llama.cpp", "vllm", "ollama", "mlx", "mlx_lm", "mlx_lm.server", "sglang"}
    for e in engines.ENGINES.values():
        words |= {e.name, e.binary}
    return words


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "engines" not in p.relative_to(PKG).parts[:1])


def _symbol_of(tree: ast.Module) -> dict[int, str]:
    """Line -> the top-level symbol (function, class or assigned name) that encloses it."""
    out: dict[int, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            name = ",".join(t.id for t in targets if isinstance(t, ast.Name)) or "<module>"
        else:
            name = "<module>"
        for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
            out[line] = name
    return out


def engine_names_outside_engines() -> list[str]:
    words = _engine_words()
    found = []
    for path in _modules():
        rel = str(path.relative_to(PKG.parent))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        symbols = _symbol_of(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in words:
                symbol = symbols.get(node.lineno, "<module>")
                if (rel, symbol) not in ALLOWED:
                    found.append(f"{rel}:{node.lineno} ({symbol}): {node.value!r}")
    return found


def test_no_module_outside_engines_names_an_engine():
    assert engine_names_outside_engines() == []


def test_the_check_sees_an_engine_name(tmp_path, monkeypatch):
    """The scan is not vacuous: a module that branches on an engine's name is reported."""
    fake = tmp_path / "stackgen"
    fake.mkdir()
    (fake / "bad.py").write_text('def f(sp):\n    return sp.engine == "vllm"\n', encoding="utf-8")
    (fake / "engines").mkdir()
    (fake / "engines" / "ok.py").write_text('NAME = "vllm"\n', encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "PKG", fake, raising=False)
    globals()["PKG"], saved = fake, PKG
    try:
        assert engine_names_outside_engines() == ["stackgen/bad.py:2 (f): 'vllm'"]
    finally:
        globals()["PKG"] = saved


# ---------------------------------------------------------------------------------------------- import cycles


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                stack += node.body
            stack += node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]


def import_graph(pkg: Path) -> dict[str, set[str]]:
    root = pkg.parent
    names = {_module_name(p, root) for p in pkg.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in pkg.rglob("*.py"):
        mod = _module_name(path, root)
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                # `import a.b.c` runs a, a.b and a.b.c: each one is a dependency
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    # a module's own packages are always initialised before it: not a dependency edge
                    if name in names and name != mod and not mod.startswith(name + "."):
                        deps.add(name)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycles():
    assert cycles(import_graph(PKG)) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / "stackgen"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "a.py").write_text("from stackgen import b\n", encoding="utf-8")
    (pkg / "b.py").write_text("from stackgen.sub.c import x\n", encoding="utf-8")
    (pkg / "sub" / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "sub" / "c.py").write_text("import stackgen.a\nx = 1\n", encoding="utf-8")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stackgen import e\n"
                              "def f():\n    from stackgen import e\n", encoding="utf-8")
    (pkg / "e.py").write_text("from stackgen import d\n", encoding="utf-8")
    assert cycles(import_graph(pkg)) == [["stackgen.a", "stackgen.b", "stackgen.sub.c"]]
