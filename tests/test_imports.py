"""Import structure: light modules import no torch/transformers/sam2 (a machine without them can still read the ROS
parameters and build the `lens` parser), the library never imports the packages built on it, no two modules import
each other (directly or around a circle), the library builds no argument parser (commands live in lens_cli), and no
module imports another module's private names."""

import ast
import subprocess
import sys

import pytest
from conftest import REPO

HEAVY = ("torch", "transformers", "sam2")
PACKAGES = ("lens_model", "training", "lens_ros", "lens_cli")
LAYERS = {  # package -> packages it must never import
    "lens_model": ("training", "lens_ros", "lens_cli"),
    "training": ("lens_ros", "lens_cli"),
    "lens_ros": ("training", "lens_cli"),
}


def _heavy_modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; -> the heavy packages it imported."""
    probe = f"{code}\nimport sys\nprint('imported:', *(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[-1].split()[1:]


def test_config_errors_and_ros_params_import_without_torch_transformers_or_sam2():
    assert _heavy_modules_after("import lens_ros.params, lens_model.model.config, lens_model.errors") == []


def test_package_names_load_on_first_use():
    assert _heavy_modules_after("import lens_model; lens_model.LensConfig; lens_model.LensError") == []
    assert _heavy_modules_after("from lens_model.export import DEFAULT_OPSET, read_metadata") == []
    assert "torch" in _heavy_modules_after("from lens_model import LensPipeline")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["segment", "--help"],
        ["export", "--help"],
        ["eval", "--help"],
        ["bag", "--help"],
        ["plot-run", "--help"],
    ],
)
def test_lens_help_imports_no_torch(argv):
    code = f"from lens_cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as exc:\n    assert exc.code == 0"
    assert _heavy_modules_after(code) == []


def _python_files(package: str):
    return sorted((REPO / package).rglob("*.py"))


def _imported_modules(tree: ast.AST, path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in the file, also those inside functions."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module, [alias.name for alias in node.names]))
    return out


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_upward_imports(package):
    found = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in _python_files(package)
        for line, module, _ in _imported_modules(ast.parse(path.read_text()), path)
        if module.split(".")[0] in LAYERS[package]
    ]
    assert found == []


def test_no_module_imports_another_modules_private_names():
    found = []
    for package in ("lens_model", "training", "lens_ros", "lens_cli"):
        for path in _python_files(package):
            for line, module, names in _imported_modules(ast.parse(path.read_text()), path):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private and module.split(".")[0] in LAYERS.keys() | {"lens_cli"}:
                    found.append(f"{path.relative_to(REPO)}:{line} imports {private} from {module}")
    assert found == []


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports: every import statement, also those inside functions and under
    TYPE_CHECKING (a circle that only lazy imports keep from failing is still a circle). `from package import
    name` points at the submodule when `name` is one, else at the package."""
    files = {_module_name(path): path for package in PACKAGES for path in _python_files(package)}
    graph = {}
    for name, path in files.items():
        targets = set()
        for _, module, names in _imported_modules(ast.parse(path.read_text()), path):
            for target in [f"{module}.{n}" if f"{module}.{n}" in files else module for n in names] or [module]:
                while target not in files and "." in target:  # `import a.b.c` of a non-module name: its module
                    target = target.rsplit(".", 1)[0]
                if target in files and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle of imports, as a path `a, b, ..., a`, for each group of modules that import each other
    (strongly connected components of more than one module; Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

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
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle_through(graph, group) for group in groups]


def _circle_through(graph, group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
    start = min(group)
    parents = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    path = [v]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def test_find_cycles_names_each_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "lens_model.model.checkpoint" in graph["lens_model.inference.pipeline"]  # the graph sees lazy imports
    cycles = [" -> ".join(cycle) for cycle in find_cycles(graph)]
    assert cycles == []


def test_lens_model_builds_no_argument_parser():
    """The `lens` commands are a layer above the library: lens_model never imports argparse (lens_cli does)."""
    found = [
        f"{path.relative_to(REPO)}:{line}"
        for path in _python_files("lens_model")
        for line, module, _ in _imported_modules(ast.parse(path.read_text()), path)
        if module.split(".")[0] == "argparse"
    ]
    assert found == []
