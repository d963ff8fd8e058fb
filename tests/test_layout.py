"""The package's layers: which modules may import Ray or torch, no import cycles, one name per module.

Each dependency rule runs in a fresh interpreter with the dependency blocked
(`sys.modules[name] = None` makes any import of it fail), so an indirect import counts too.
"""

import ast
import os
import subprocess
import sys
import textwrap

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mtl_ray")
MODULES = sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")

NO_RAY = [
    "registry",
    "gate",
    "progress",
    "device_decode",
    "pyfunc",
    "advise",
    "validate",
    "convert",
    "synth",
    "tracking",
    "images",
    "shards",
    "storage",
    "metrics",
    "step",
    "models",
    "losses",
    "weighting",
    "checkpoint",
    "config",
    "plots",
]
NO_TORCH = ["shards", "storage", "validate", "convert", "synth", "images", "config", "text", "errors", "progress"]


def import_with_blocked(blocked: str, module: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{blocked!r}] = None
        import mtl_ray.{module}
        loaded = sorted(m for m in sys.modules if m == {blocked!r} or m.startswith({blocked!r} + "."))
        assert loaded == [{blocked!r}], loaded
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", NO_RAY)
def test_imports_without_ray(module):
    done = import_with_blocked("ray", module)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("module", NO_TORCH)
def test_imports_without_torch(module):
    done = import_with_blocked("torch", module)
    assert done.returncode == 0, done.stderr[-2000:]


def imports_of(module: str) -> list[tuple[str, ast.AST]]:
    """Every mtl_ray module that `module` imports, anywhere in its file (functions and TYPE_CHECKING too)."""
    with open(os.path.join(PACKAGE, module + ".py")) as f:
        tree = ast.parse(f.read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "mtl_ray":
            found += [(alias.name, node) for alias in node.names if alias.name in MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mtl_ray."):
            found.append((node.module.split(".")[1], node))
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[1], node) for alias in node.names if alias.name.startswith("mtl_ray.")]
    return found


def test_no_import_cycles():
    graph = {m: sorted({name for name, _ in imports_of(m)} - {m}) for m in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in graph[module]:
            if state.get(dep) == "open":
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_the_shard_module_is_imported_one_way():
    """`from mtl_ray.shards import NAME`, never as a module object under some alias."""
    assert "format" not in MODULES  # would shadow a builtin
    for module in MODULES:
        for name, node in imports_of(module):
            if name == "shards":
                assert isinstance(node, ast.ImportFrom) and node.module == "mtl_ray.shards", (
                    f"{module}: line {node.lineno}"
                )
