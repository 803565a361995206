"""The layering DESIGN.md promises, checked from the source with ``ast``.

Parsing (rather than importing) sees every import, including the ones inside functions that
exist to dodge an import cycle or a heavy dependency, which is exactly where layering rots:

- the engine never imports gradio;
- ``ui/`` reaches the engine only through ``from engine import <public name>`` and never
  touches a model's insides (``.adapter``, ``<x>.model``);
- the engine's subpackages (``engine.models``, ``engine.methods``, ...; a top-level module
  such as ``engine.compress`` counts as its own unit) import each other without cycles;
- methods, analysis and transforms learn architecture facts (config keys, module names) from
  the adapter (``engine/models/adapters.py``), never by reading them themselves.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, NamedTuple

REPO = Path(__file__).resolve().parents[1]
GUI_PACKAGES = {"gradio", "gradio_client"}
UI_NAMESPACE = "ui"  # the tabs' SimpleNamespace: ``ui.model`` is the Model tab, not a torch module
ADAPTED = ("engine/methods", "engine/analysis", "engine/transforms")  # code that works on any architecture
CONFIG_NAMES = {"config", "cfg"}
# attributes that name one architecture's modules: only an adapter may reach for them
ARCHITECTURE_ATTRS = {"layer_idx", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj", "out_proj",
                      "gate_proj", "up_proj", "down_proj", "fc1", "fc2", "lm_head", "embed_tokens",
                      "input_layernorm", "post_attention_layernorm"}


class Import(NamedTuple):
    path: Path
    line: int
    module: str  # absolute module name (relative imports resolved)
    names: tuple[str, ...]  # what ``from module import ...`` takes; () for ``import module``


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(package: str, root: Path = REPO) -> Iterator[Import]:
    """Every import statement anywhere in ``package`` (module level, functions, classes)."""
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(path, root)
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(path, node.lineno, alias.name, ())
            elif isinstance(node, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                yield Import(path, node.lineno, module, tuple(a.name for a in node.names))


def public_names(root: Path = REPO) -> set[str]:
    """``engine.__all__``, read from the source so the check needs neither torch nor a working engine."""
    tree = ast.parse((root / "engine" / "__init__.py").read_text())
    values = [n.value for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__"]
    return set(ast.literal_eval(values[0])) if values else set()


def where(imp: Import, root: Path = REPO) -> str:
    return f"{imp.path.relative_to(root)}:{imp.line}"


def gui_imports(root: Path = REPO) -> list[str]:
    return [f"{where(i, root)} imports {i.module}" for i in imports("engine", root)
            if i.module.split(".")[0] in GUI_PACKAGES]


def ui_violations(public: set[str], root: Path = REPO) -> list[str]:
    """Engine imports other than ``from engine import <public name>``, and reaches into models."""
    bad = []
    for i in imports("ui", root):
        if i.module.split(".")[0] != "engine":
            continue
        if i.module != "engine" or not i.names:
            bad.append(f"{where(i, root)} imports {i.module} (use `from engine import ...`)")
        else:
            bad += [f"{where(i, root)} imports engine.{n}, not a public name" for n in i.names if n not in public]
    for path in sorted((root / "ui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and (node.attr == "adapter" or node.attr == "model" and not (
                    isinstance(node.value, ast.Name) and node.value.id == UI_NAMESPACE)):
                bad.append(f"{path.relative_to(root)}:{node.lineno} reads .{node.attr} (use an engine API helper)")
    return bad


def _is_config(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in CONFIG_NAMES
            or isinstance(node, ast.Attribute) and node.attr == "config")


def architecture_reads(root: Path = REPO) -> list[str]:
    """Config keys and architecture-specific module attributes read outside the adapters."""
    bad = []
    for path in sorted(p for folder in ADAPTED for p in (root / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            key = None
            if isinstance(node, ast.Attribute) and _is_config(node.value):
                key = node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "setattr", "hasattr") and node.args
                  and (_is_config(node.args[0]) or len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                       and node.args[1].value in ARCHITECTURE_ATTRS)):
                key = ast.unparse(node.args[1]) if len(node.args) > 1 else "?"
            elif isinstance(node, ast.Attribute) and node.attr in ARCHITECTURE_ATTRS:
                key = node.attr
            if key is not None:
                bad.append((str(path.relative_to(root)), node.lineno, node.col_offset, key))
    return [f"{p}:{line} reads {key} (ask the adapter)" for p, line, _col, key in sorted(bad)]


def unit_of(module: str, packages: set[str]) -> str:
    """``engine.models.loading`` -> ``engine.models``; top-level modules stay themselves."""
    parts = module.split(".")
    return ".".join(parts[:2]) if ".".join(parts[:2]) in packages else module


def unit_graph(root: Path = REPO) -> dict[str, dict[str, str]]:
    """unit -> {imported unit: where the first such import is}, over engine.* imports only."""
    modules = {module_name(p, root) for p in (root / "engine").rglob("*.py")}
    packages = {module_name(p, root) for p in (root / "engine").rglob("__init__.py")}
    graph: dict[str, dict[str, str]] = {}
    for i in imports("engine", root):
        if i.module.split(".")[0] != "engine":
            continue
        source = unit_of(module_name(i.path, root), packages)
        # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
        targets = [f"{i.module}.{n}" if f"{i.module}.{n}" in modules else i.module for n in i.names or ("",)]
        for target in {unit_of(t, packages) for t in targets} - {source}:
            graph.setdefault(source, {}).setdefault(target, where(i, root))
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def describe(component: list[str], graph: dict[str, dict[str, str]]) -> str:
    edges = [f"  {a} -> {b} ({graph[a][b]})" for a in component for b in component if b in graph.get(a, {})]
    return " <-> ".join(component) + "\n" + "\n".join(edges)


def test_engine_never_imports_gradio():
    assert gui_imports() == []


def test_ui_uses_only_the_public_engine_api():
    assert ui_violations(public_names()) == []


def test_engine_subpackages_import_each_other_without_cycles():
    graph = unit_graph()
    assert "engine.models" in graph and "engine.methods" in graph  # the parser saw the engine
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph) for c in found)


def test_methods_analysis_and_transforms_ask_the_adapter_for_architecture_facts():
    assert architecture_reads() == []


def test_the_architecture_check_catches_direct_reads(tmp_path):
    files = {"engine/methods/m.py": ("def f(model, layer, adapter, config):\n"
                                     "    n = model.config.num_hidden_layers + adapter.heads(model.config)[0]\n"
                                     "    layer.self_attn.layer_idx = getattr(config, 'hidden_size')\n"
                                     "    return getattr(layer, 'fc1', None)\n"),
             "engine/analysis/a.py": "", "engine/transforms/t.py": ""}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    assert [v.split(" ", 1)[1] for v in architecture_reads(tmp_path)] == [
        "reads num_hidden_layers (ask the adapter)", "reads layer_idx (ask the adapter)",
        "reads self_attn (ask the adapter)", "reads 'hidden_size' (ask the adapter)", "reads 'fc1' (ask the adapter)"]


def test_the_checks_catch_violations(tmp_path):
    """Each rule on a small tree that breaks it, so a silently passing check cannot go unnoticed."""
    files = {
        "engine/__init__.py": "from .a import f\n__all__ = ['f']\n",
        "engine/a/__init__.py": "def f():\n    from ..b import g\n",
        "engine/b/__init__.py": "from ..a import f\n",
        "engine/b/ok.py": "def h():\n    import gradio as gr\n",
        "ui/tab.py": ("from engine import f, hidden\nfrom engine.a import f\nimport engine\n"
                      "def show(lm, ui):\n    return lm.adapter, lm.model, ui.model\n"),
    }
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    assert gui_imports(tmp_path) == ["engine/b/ok.py:2 imports gradio"]
    assert [v.split(" ", 1)[1] for v in ui_violations(public_names(tmp_path), tmp_path)] == [
        "imports engine.hidden, not a public name", "imports engine.a (use `from engine import ...`)",
        "imports engine (use `from engine import ...`)", "reads .adapter (use an engine API helper)",
        "reads .model (use an engine API helper)"]
    assert cycles(unit_graph(tmp_path)) == [["engine.a", "engine.b"]]
