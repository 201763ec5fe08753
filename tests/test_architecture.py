"""The layout's rules, checked on the source: one-way layers, no import cycles, light modules stay light.

Layers, top to bottom (DESIGN.md): an import only ever points down or within its own package.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["cli", "elicitation", "diffing", "organisms", "finetune", "data", "workbench"]
NAMESPACE = "mow"

# Modules any layer may import without pulling in model code: configs, records, file formats, scoring.
LIGHT_MODULES = [
    "mow.workbench.config", "mow.workbench.errors", "mow.workbench.rundir", "mow.workbench.stats",
    "mow.workbench.specs", "mow.workbench.backend_config", "mow.workbench.layout", "mow.workbench.files",
    "mow.workbench.names",
    "mow.data.records", "mow.data.text", "mow.data.truth", "mow.data.directions", "mow.data.layouts",
    "mow.finetune.config", "mow.organisms.base", "mow.organisms.taboo.config", "mow.organisms.sdf.config",
    "mow.organisms.em.config", "mow.organisms.backdoor.config", "mow.organisms.side_constraint.config",
    "mow.organisms.user_belief.config", "mow.organisms.hidden_prompt.config",
    "mow.diffing.config", "mow.diffing.layout", "mow.elicitation.config",
    "mow.elicitation.layout", "mow.elicitation.scoring", "mow.elicitation.leaderboard", "mow.elicitation.audit_config",
    "mow.cli.main",
]
HEAVY = ("torch", "transformers", "trl", "peft", "datasets")


def project_modules(root: Path) -> dict[str, Path]:
    """`mow.<package>.<module>` -> source file, for the layer folders of a checkout."""
    found = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((NAMESPACE, *parts))] = path
    return found


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every import of a project module, at any depth of the file (a function-local import counts like any other)."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one member (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def layer_of(module: str) -> str:
    return module.split(".")[1]


def violations(root: Path) -> list[str]:
    """Every broken rule of the layout in the checkout at `root`, one line each."""
    modules = project_modules(root)
    edges = import_edges(modules)
    found = [f"module cycle: {' <-> '.join(c)}" for c in strongly_connected(edges)]
    package_edges: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for source, targets in edges.items():
        for target in targets:
            if layer_of(source) != layer_of(target):
                package_edges[layer_of(source)].add(layer_of(target))
            if LAYERS.index(layer_of(target)) < LAYERS.index(layer_of(source)):
                found.append(f"back-import: {source} ({layer_of(source)}) imports {target} ({layer_of(target)}), "
                             f"a higher layer")
    found += [f"package cycle: {' <-> '.join(c)}" for c in strongly_connected(package_edges)]
    importers_of_cli = [s for s, targets in edges.items() if layer_of(s) != "cli" and any(
        layer_of(t) == "cli" for t in targets)]
    found += [f"{s} imports the CLI" for s in importers_of_cli]
    return found


def test_layers_point_down_and_nothing_cycles():
    assert violations(REPO) == []


def test_a_planted_back_import_is_caught(tmp_path: Path):
    for layer in LAYERS:
        shutil.copytree(REPO / layer, tmp_path / layer, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    errors = tmp_path / "workbench" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _planted():\n    from mow.diffing.kl import per_token_kl\n")
    found = violations(tmp_path)
    planted = "back-import: mow.workbench.errors (workbench) imports mow.diffing.kl"
    assert any(line.startswith(planted) for line in found)
    assert any(line.startswith("module cycle:") and "mow.workbench.errors" in line for line in found)
    assert any(line.startswith("package cycle:") for line in found)


def test_light_modules_import_no_model_code():
    """Configs, records, formats and scoring in a fresh interpreter: none of torch, transformers, trl, peft,
    datasets gets imported."""
    assert set(LIGHT_MODULES) <= set(project_modules(REPO))  # the list names modules that exist
    script = (f"import importlib, json, sys\nfor name in {LIGHT_MODULES!r}:\n    importlib.import_module(name)\n"
              f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_package_folder_is_installed():
    """A folder with an `__init__.py` that pyproject's package list misses works in an editable install and is
    missing from a wheel (`pip install .`): its modules would fail to import there."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {f"{NAMESPACE}." + ".".join(path.parent.relative_to(REPO).parts)
               for package in [*LAYERS, "configs"] for path in (REPO / package).rglob("__init__.py")}
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
