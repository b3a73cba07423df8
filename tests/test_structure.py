"""The package's shape: no import cycle (function-level imports included), small modules, a clean
lint and format."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polineurons.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "polineurons"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the polineurons modules it imports, anywhere in its body."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            targets |= {n for n in names if n in modules and n != name}
        graph[name] = targets - {"polineurons"} if name != "polineurons" else targets
    return graph


def test_no_import_cycle_anywhere():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_every_module_imports_in_layer_order():
    """Importing each module after only the modules it depends on (a fresh interpreter) works."""
    graph, order = import_graph(), []
    while len(order) < len(graph):
        order += sorted(m for m, deps in graph.items() if m not in order and deps <= set(order))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    done = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_modules_stay_small_and_the_cli_thin():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 450, {n: s for n, s in sizes.items() if s > 450}
    assert sizes["polineurons.cli"] < 24 * len(COMMANDS)  # no work in the CLI: a verb is its options


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(), reason="ruff not installed"
)
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    done = subprocess.run(
        [ruff, *command, "polineurons", "tests", "benchmarks", "figures"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_the_public_api_imports_from_the_package_lazily_and_is_documented():
    code = (
        "import sys, polineurons\n"
        "assert 'torch' not in sys.modules, 'import polineurons loads torch'\n"
        "from polineurons import measure_stance, finetune, localize, patch_experiment, run_mitigation\n"
        "from polineurons import run_pipeline, load_run, RunConfig, NeuronSet\n"
        "missing = [n for n in polineurons.__all__ if not (getattr(polineurons, n).__doc__ or '').strip()]\n"
        "assert not missing, missing\n"
        "import inspect\n"
        "verbs = [n for n in polineurons.__all__ if inspect.isfunction(getattr(polineurons, n))]\n"
        "bare = [n for n in verbs if not any(s in getattr(polineurons, n).__doc__ for s in ('Example', '>>>'))]\n"
        "assert not bare, f'no call shown: {bare}'\n"
        "assert set(polineurons.__all__) <= set(dir(polineurons))\n"
        "try:\n    polineurons.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
