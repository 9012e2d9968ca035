"""The shape of the code: packages by concern, layered, without import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# A package may import its own layer and the ones below, never one above.
LAYERS = {
    "core": 0,
    "models": 1, "data": 1,
    "sampling": 2, "verify": 2,
    "select": 3, "critique": 3, "synth": 3, "train": 3, "eval": 3,
    "studies": 4,
    "commands": 4,  # names stage modules as strings, imported on use
    "cli": 5, "tiny": 5,
}
# Pure functions with no assay imports of their own, usable from any layer.
LEAVES = {"assay.eval.stats"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "assay").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every assay module ``mod`` imports, at module level or inside functions."""
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            names = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n and n != mod and n != "assay":
                found.add(n)
    return found


def _layer(mod: str) -> int:
    if mod in LEAVES:
        return -1
    top = mod.split(".")[1] if "." in mod else mod
    return LAYERS[top]


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted(m for m in _modules() if m != "assay" and m.split(".")[1] not in LAYERS)
    assert unknown == [], f"place these in a package (and a layer here): {unknown}"


def test_leaf_modules_import_nothing_from_assay_but_core():
    mods = _modules()
    assert {m: sorted(t for t in _imports(m, mods[m], mods) if not t.startswith("assay.core"))
            for m in LEAVES} == {m: [] for m in LEAVES}


def test_no_package_imports_a_layer_above_its_own():
    mods = _modules()
    upward = sorted(f"{m} -> {t}" for m, p in mods.items() if m != "assay"
                    for t in _imports(m, p, mods) if _layer(t) > _layer(m))
    assert upward == []


def test_no_import_cycles_between_packages():
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        if m == "assay":
            continue
        src = m.split(".")[1]
        graph.setdefault(src, set()).update(t.split(".")[1] for t in _imports(m, p, mods)
                                            if t.split(".")[1] != src and t not in LEAVES)
    seen: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        seen[n] = 1
        for t in graph.get(n, ()):
            assert seen.get(t) != 1, "package import cycle: " + " -> ".join(stack + [n, t])
            if t not in seen:
                visit(t, stack + [n])
        seen[n] = 2

    for n in graph:
        if n not in seen:
            visit(n, [])


HEAVY = {"torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm", "ray", "matplotlib",
         "reasoning_gym", "math_verify", "sympy", "latex2sympy2_extended", "gguf", "safetensors"}


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Import statements that run when the module is imported (top level, or under if/try there)."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body]
    return out


def _pulls_heavy(mod: str, mods: dict[str, Path], seen: set) -> bool:
    if mod in seen:
        return False
    seen.add(mod)
    for node in _top_level(ast.parse(mods[mod].read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            ([] if node.level else [node.module] + [f"{node.module}.{a.name}" for a in node.names])
        for n in names:
            if n.split(".")[0] in HEAVY:
                return True
            while n.startswith("assay") and n not in mods:
                n = n.rpartition(".")[0]
            if n in mods and n != mod and _pulls_heavy(n, mods, seen):
                return True
    return False


def test_assay_modules_are_imported_at_module_level_unless_they_pull_a_heavy_dependency():
    mods = _modules()
    lazy = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        top = {id(n) for n in _top_level(tree)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in top and (node.module or "").startswith("assay"):
                targets = {t for a in node.names for t in [f"{node.module}.{a.name}", node.module] if t in mods}
                if not any(_pulls_heavy(t, mods, set()) for t in targets):
                    lazy.append(f"{m}: from {node.module} import ...")
    assert lazy == [], "import these at module level (they load nothing heavy): " + "; ".join(lazy)
