"""Layers only look down: no import cycle among t2v_jax's modules (imports inside functions count)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "t2v_jax"


def _module_names() -> dict[str, pathlib.Path]:
    names = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return names


def import_graph() -> dict[str, set[str]]:
    """{module: the t2v_jax modules it imports anywhere in its source}.

    `from t2v_jax import cascade` counts as importing t2v_jax.cascade; the package root
    (whose lazy attributes import on first use) is left out.
    """
    modules = _module_names()
    graph = {}
    for name, file in modules.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    deps.add(full if full in modules else base)
        graph[name] = {d for d in deps if d in modules and d not in (name, "t2v_jax")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_two_module_cycle():
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [["a", "b"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "t2v_jax.pipeline_format" in graph["t2v_jax.cascade"]  # the graph sees real imports
    assert cycles(graph) == []


def test_the_pipeline_writer_sits_below_the_cascade():
    graph = import_graph()
    assert "t2v_jax.cascade" in graph["t2v_jax.pipeline_store"]
    assert "t2v_jax.pipeline_store" not in graph["t2v_jax.cascade"]
    assert "t2v_jax.cascade" not in graph["t2v_jax.pipeline_format"]
