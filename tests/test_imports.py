"""Import structure: light modules import no torch/transformers/sam2 (a machine without them can still read the ROS
parameters and build the `lens` parser), the library never imports the packages built on it, and no module imports
another module's private names."""

import ast
import subprocess
import sys

import pytest
from conftest import REPO

HEAVY = ("torch", "transformers", "sam2")
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
