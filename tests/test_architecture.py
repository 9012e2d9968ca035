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
    "select": 3, "train": 3, "eval": 3,
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
