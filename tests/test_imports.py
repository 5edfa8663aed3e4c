"""Imports inside the package point one way: no circle, no import of a higher layer, imports at module level.

The layers (docs/design.md, "Layers") go from foundations that know nothing of mixcd's tasks to the command
line. A module may import its own layer (without a circle) and the layers below it, never one above. Function-
level imports of package modules are kept only where `mixcd --help` must stay fast (the CLI and the Hydra glue
load the library on demand); everything else imports at module level, so the graph read here is the real one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mixcd_cli"

# top-level module or subpackage → layer; every module of the package must be listed
LAYERS: dict[str, int] = {
    # foundations: errors, registries, files, processes, output; nothing about tasks or models
    "errors": 0, "registry": 0, "options": 0, "hub": 0, "callbacks": 0, "artifacts": 0,
    "runtime": 0, "distributed": 0, "clustering": 0, "metrics": 0, "places": 0,
    # what a task kind means (the objective seam), the typed results a run writes, and the rich output that
    # prints them
    "objectives": 1, "results": 1, "result_json": 1, "console": 1,
    # data: dataset sources, then tasks and experiments over them; then text data, generation tasks and models
    "sources": 2, "data": 2, "text": 3, "models": 3, "generation": 3,
    # samplers see rows, losses and correctness only
    "samplers": 4,
    # the training engine, then snapshots (made by inference passes), and the trackers
    "training": 5, "snapshot": 6, "tracking": 6, "catalog": 6,
    # the configuration layer: the schema asks the library for its choices; the public API (snapshots, samplers,
    # the audit) and the Trainer integration built on it, which the recipes use too
    "schema": 7, "api": 7, "hf": 7,
    # recipes (the stages) and the report read configurations and results
    "recipes": 8, "report": 8,
    # the command line
    "hydra_app": 9, "cli": 10,
}
# function-level imports of package modules allowed here, and why
LAZY_ALLOWED = {"cli": "mixcd --help and completion must not import torch", "hydra_app": "the same, for the "
                "Hydra glue that cli loads first"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement names (a package's __init__ as its dotted name)."""
    if isinstance(node, ast.Import):
        names = [a.name.removeprefix("mixcd_cli.") for a in node.names if a.name.startswith("mixcd_cli.")]
        return [n for n in names if n in MODULES]
    if node.level == 0:
        if not (node.module or "").startswith("mixcd_cli"):
            return []
        base = (node.module or "").removeprefix("mixcd_cli").lstrip(".")
    else:
        here = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        up = here[:len(here) - (node.level - 1)] if module else []
        base = ".".join([*up, *([node.module] if node.module else [])])
    parts = [f"{base}.{a.name}".lstrip(".") for a in node.names]
    submodules = [p for p in parts if p in MODULES]
    # `from pkg import a, b` of submodules alone loads them, not pkg's own names; anything else reads pkg
    return submodules + ([base] if base in MODULES and base and len(submodules) < len(parts) else [])


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """module → [(imported module, at module level?)]."""
    graph: dict[str, list[tuple[str, bool]]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        # module level: the body, and `if TYPE_CHECKING:` blocks in it (imports for annotations only)
        top = {id(n) for n in tree.body} | {id(n) for block in tree.body if isinstance(block, ast.If)
                                           and ast.unparse(block.test).endswith("TYPE_CHECKING") for n in block.body}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges += [(t, id(node) in top) for t in _targets(module, node) if t != module]
        graph[module] = edges
    return graph


GRAPH = _imports()


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]] if module else -1


def test_every_module_has_a_layer() -> None:
    missing = sorted({m.split(".")[0] for m in MODULES if m} - set(LAYERS))
    assert not missing, f"give these modules a layer in LAYERS (and docs/design.md): {missing}"


def test_no_import_points_upward() -> None:
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})" for m, edges in GRAPH.items()
              for t, _ in edges if t and m.split(".")[0] != t.split(".")[0] and _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import circle of ``graph`` (module → modules it imports) as a path back to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return [*stack[stack.index(t):], t]
            found = visit(t) if t not in state else None
            if found:
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        found = visit(m) if m not in state else None
        if found:
            return found
    return None


def test_no_import_circle() -> None:
    # a package's __init__ re-exporting its submodules is not a circle: drop edges from a package to its own parts
    graph = {m: {t for t, _ in edges if not t.startswith(m + ".") or not m} for m, edges in GRAPH.items()}
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_imports_are_at_module_level() -> None:
    lazy = [f"{m} imports {t} inside a function" for m, edges in GRAPH.items() for t, top in edges
            if not top and m.split(".")[0] not in LAZY_ALLOWED]
    assert not lazy, "\n".join(lazy)


def test_the_checker_sees_a_circle_and_an_upward_import() -> None:
    """The checks above can fail: a circle of two modules is found, and the resolver finds relative imports of
    both kinds, one of them pointing up."""
    assert find_circle({"data": {"text"}, "text": {"hub", "data"}, "hub": set()}) == ["data", "text", "data"]
    assert find_circle({"data": {"hub"}, "text": {"hub", "data"}, "hub": set()}) is None
    module = "samplers.base"
    tree = ast.parse("from ..schema import validate\nfrom . import static\n")
    found = [t for node in tree.body for t in _targets(module, node)]
    assert found == ["schema", "samplers.static"]
    assert _layer("schema") > _layer(module)
