"""The house's floors: every module imports only from its own floor or below, and no two
packages import each other. ``python tests/test_layers.py [ROOT]`` lists what breaks the rule.

Floors, lowest first (docs/architecture.md draws them): the basics every part uses; the store
and the job spec models; networks and datasets; what is built from them (training, synthesis,
metrics); the stage kinds; planning and run records; the executor; the backends; and the
command line on top. The command modules of each package (``*/commands.py``) belong to the top.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FLOORS: list[set[str]] = [
    {"errors", "ranks", "progress", "layout", "seeds", "__init__"},
    {"storage", "jobspec", "context"},
    {"model", "data"},
    {"training", "synthesis", "metrics", "severity"},
    {"stages"},
    {"plan", "runs"},
    {"execute"},
    {"launch"},
    {"cli", "commands", "report"},
]


def floor_of(module: str) -> int:
    """The floor of a dotted module name under cleftgan_hpc."""
    parts = module.split(".")[1:]
    if parts and parts[-1] == "commands":
        parts = ["commands"]
    top = parts[0] if parts else "__init__"
    for i, names in enumerate(FLOORS):
        if top in names:
            return i
    raise KeyError(f"{module}: not on any floor; add its package to FLOORS")


def imports(root: Path) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every cleftgan_hpc import, at module level or in a function."""
    out = []
    pkg = root / "cleftgan_hpc"
    for path in sorted(pkg.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:  # from .x import y: resolve against the package
                package = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                names = [".".join(package + ([node.module] if node.module else []))]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
                if node.module == "cleftgan_hpc":  # from cleftgan_hpc import x: a module, or the package's own name
                    names = [f"cleftgan_hpc.{a.name}" if a.name.islower() and a.name[0] != "_" else "cleftgan_hpc"
                             for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out += [(module, n, node.lineno) for n in names if n.startswith("cleftgan_hpc.")]
    return out


def upward(root: Path) -> list[str]:
    return [
        f"{a} (floor {floor_of(a)}) imports {b} (floor {floor_of(b)}) at line {line}"
        for a, b, line in imports(root)
        if floor_of(b) > floor_of(a)
    ]


def package_cycles(root: Path) -> list[str]:
    """Pairs of packages (or top modules) that import each other."""
    def pkg(m: str) -> str:
        parts = m.split(".")
        return "commands" if parts[-1] == "commands" else parts[1] if len(parts) > 1 else parts[0]

    edges = {(pkg(a), pkg(b)) for a, b, _ in imports(root) if pkg(a) != pkg(b)}
    return sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    assert upward(Path(__file__).parents[1]) == []


def test_no_two_packages_import_each_other() -> None:
    assert package_cycles(Path(__file__).parents[1]) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "cleftgan_hpc" / "model").mkdir(parents=True)
    (tmp_path / "cleftgan_hpc" / "model" / "x.py").write_text("def f():\n    from cleftgan_hpc.stages import y\n")
    assert upward(tmp_path) == ["cleftgan_hpc.model.x (floor 2) imports cleftgan_hpc.stages (floor 4) at line 2"]


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1])
    found = upward(root)
    print("\n".join(found))
    print(f"{len(found)} upward imports; package cycles: {package_cycles(root) or 'none'}")
