"""The scripts in benchmarks/ are outside the library, so nothing imports them: each must at least start
(its imports resolve against the library as it is now) and print its usage."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


def test_there_are_scripts():
    assert len(SCRIPTS) >= 4


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_starts_and_prints_its_usage(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def test_shell_scripts_parse():
    for script in sorted((REPO / "benchmarks").glob("*.sh")):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"


def _module_attributes(script: Path) -> list[tuple[str, str, int]]:
    """(module, attribute, line) for every ``name.attr`` where ``name`` is an isorobust module the script
    imported (``from isorobust import io``, ``import isorobust.rundir as rundir``)."""
    import ast

    tree = ast.parse(script.read_text())
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("isorobust"):
            for alias in node.names:
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("isorobust") and alias.asname:
                    modules[alias.asname] = alias.name
    return [(modules[node.value.id], node.attr, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_uses_only_what_the_library_has(script):
    """Attributes a script reaches only at run time (``io.load_model`` after it moved to isorobust.models)."""
    import importlib

    missing = []
    for module, attr, line in _module_attributes(script):
        try:
            target = importlib.import_module(module)
        except ImportError:
            continue  # a class or function imported by name, not a module: --help above checked the import
        if not hasattr(target, attr):
            missing.append(f"{script.name}:{line}: {module}.{attr}")
    assert not missing, missing


def test_scripts_have_no_undefined_names():
    """pyflakes' undefined names (a function used but never imported), which --help does not reach."""
    import io as stdio

    from pyflakes import api as flakes, reporter as pyflakes_reporter  # the dev extra

    out, err = stdio.StringIO(), stdio.StringIO()
    for script in SCRIPTS:
        flakes.checkPath(str(script), pyflakes_reporter.Reporter(out, err))
    undefined = [line for line in out.getvalue().splitlines() if "undefined name" in line]
    assert not undefined, undefined
