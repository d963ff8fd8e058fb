"""The package's layers: which packages may import Ray or torch, no import cycles, one name per module,
and modules and functions of a readable size.

Each dependency rule imports every module it covers in one fresh interpreter with the dependency
blocked (`sys.modules[name] = None` makes any import of it fail), so an indirect import counts too.
"""

import ast
import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import mtl_ray

ROOT = os.path.dirname(mtl_ray.__file__)
MODULES = sorted(m.name for m in pkgutil.walk_packages([ROOT], "mtl_ray.") if not m.name.endswith("__main__")) + [
    "mtl_ray"
]
PUBLISHED = {"mtl_ray.losses", "mtl_ray.models", "mtl_ray.weighting", "mtl_ray.pyfunc"}
"""Old paths kept as re-exports (../shared/notes/interfaces.md's API, models pickled before 0.2)."""


def covered(*prefixes: str) -> list[str]:
    return [m for m in MODULES if any(m == p or m.startswith(p + ".") for p in prefixes)]


RULES = {
    "torch": covered(
        "mtl_ray.data",
        "mtl_ray.config",
        "mtl_ray.errors",
        "mtl_ray.progress",
        "mtl_ray.result",
        "mtl_ray.cluster.runtime",
        "mtl_ray.cluster.resources",
        "mtl_ray.cluster.inbox",
        "mtl_ray.serving.http",
        "mtl_ray.cli.app",
    ),
    "ray": covered(
        "mtl_ray.data",
        "mtl_ray.model",
        "mtl_ray.registry",
        "mtl_ray.config",
        "mtl_ray.errors",
        "mtl_ray.progress",
        "mtl_ray.result",
        "mtl_ray.plots",
        "mtl_ray.studies.advise",
        "mtl_ray.studies.probes",
        "mtl_ray.training.device_decode",
        "mtl_ray.cluster.runtime",
        "mtl_ray.cluster.resources",
        "mtl_ray.serving.http",
        "mtl_ray.cli",
        *PUBLISHED,
    ),
    # a served model's environment, and every Ray Train worker of every run (its import took 1.7 s)
    "sklearn": covered("mtl_ray.registry.pyfunc", "mtl_ray.pyfunc", "mtl_ray.model", "mtl_ray.training"),
}


def imports_blocked(blocked: str, modules: list[str]) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import importlib, sys
        sys.modules[{blocked!r}] = None
        failed = []
        for name in {modules!r}:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                failed.append(f"{{name}}: {{exc}}")
        loaded = sorted(m for m in sys.modules if m == {blocked!r} or m.startswith({blocked!r} + "."))
        assert not failed and loaded == [{blocked!r}], (failed, loaded)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("blocked", sorted(RULES))
def test_layers_import_without(blocked):
    done = imports_blocked(blocked, RULES[blocked])
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_cli_command_group_can_be_listed_without_torch_or_ray():
    """`mtl-ray --help` builds every parser; the API behind a command is imported when it runs."""
    for blocked in ("torch", "ray"):
        code = f"import sys; sys.modules[{blocked!r}] = None; from mtl_ray.cli.app import main; main(['--help'])"
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and "quickstart" in done.stdout, done.stderr[-2000:]


def source(module: str) -> str:
    parts = module.split(".")[1:]
    path = os.path.join(ROOT, *parts)
    with open(path + ".py" if os.path.isfile(path + ".py") else os.path.join(path, "__init__.py")) as f:
        return f.read()


def imports_of(module: str) -> list[tuple[str, ast.AST]]:
    """Every mtl_ray module that `module` imports, anywhere in its file (functions and TYPE_CHECKING too)."""
    found = []
    for node in ast.walk(ast.parse(source(module))):
        if isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{module}: line {node.lineno}: relative import; write the full mtl_ray path")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mtl_ray"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((full if full in MODULES else node.module, node))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names if alias.name.startswith("mtl_ray")]
    return found


def test_no_import_cycles():
    graph = {m: sorted({name for name, _ in imports_of(m) if name in MODULES} - {m}) for m in MODULES}
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


def test_each_module_is_imported_by_one_name():
    """`from mtl_ray.data.shards import NAME`, never the shard module as an object under some alias;
    and no module of the package goes through the old paths kept for others."""
    assert "mtl_ray.format" not in MODULES  # would shadow a builtin
    for module in MODULES:
        for name, node in imports_of(module):
            assert name not in PUBLISHED or module in PUBLISHED, f"{module}: line {node.lineno} imports {name}"
            if name == "mtl_ray.data.shards":
                assert isinstance(node, ast.ImportFrom) and node.module == "mtl_ray.data.shards", (
                    f"{module}: line {node.lineno}"
                )


def test_the_published_api_stays_where_interfaces_md_says():
    from mtl_ray.losses import masked_bce
    from mtl_ray.model import backbones, losses, weighting
    from mtl_ray.models import build
    from mtl_ray.pyfunc import MultiTaskModel
    from mtl_ray.registry import pyfunc
    from mtl_ray.weighting import get

    assert (masked_bce, build, get) == (losses.masked_bce, backbones.build, weighting.get)
    assert MultiTaskModel is pyfunc.MultiTaskModel


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def test_modules_and_functions_stay_readable():
    """No module over 450 lines and no function over 80: the tree is meant to be read."""
    long = []
    for module in MODULES:
        text = source(module)
        if text.count("\n") > MAX_MODULE_LINES:
            long.append(f"{module}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long
