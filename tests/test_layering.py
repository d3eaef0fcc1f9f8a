"""The layering rule, read from the source with `ast`: no module imports from a layer above its own.

    base (errors, atomic, fs, figures, backend) -> data, models -> run -> inference -> training, micrograph
      -> evaluation -> reports -> workflow -> cli, app

`inference` (the Classifier and the one batching helper) sits below training because training's
macro-F1 callback predicts through it. Imports inside functions count too: a late import that
runs back up is still a cycle in the design. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "virion"

LAYERS = {
    "virion": 0,
    "errors": 0,
    "atomic": 0,
    "figures": 0,
    "backend": 0,
    "fs": 0,
    "data": 1,
    "models": 1,
    "run": 2,
    "inference": 3,
    "training": 4,
    "micrograph": 4,
    "evaluation": 5,
    "reports": 6,
    "workflow": 7,
    "cli": 8,
    "app": 8,
}


def _layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "virion"
    if key not in LAYERS:
        raise AssertionError(
            f"{module}: not in the layer map of tests/test_layering.py; add it there and to docs/architecture.md"
        )
    return key, LAYERS[key]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, imported virion module) for every import statement, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8") if text is None else text, filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "virion"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "virion":
                found.append((node.lineno, name))
    return found


SOURCES = sorted(SRC.rglob("*.py"))


def test_every_module_is_in_a_layer():
    for path in SOURCES:
        _layer_of(_module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_back_up(path):
    here, level = _layer_of(_module_name(path))
    upward = []
    for line, name in _imports(path):
        there, their_level = _layer_of(name)
        if their_level > level:
            upward.append(f"line {line}: {name} ({there}, layer {their_level} > {here}, layer {level})")
    assert not upward, f"{path.relative_to(SRC)} imports from a layer above its own: " + "; ".join(upward)


def test_the_checker_sees_an_upward_import():
    """The rule can fail: a data module that imports evaluation is caught, even inside a function."""
    probe = SRC / "data" / "_layering_probe.py"
    found = _imports(probe, "def f():\n    from virion.evaluation import metrics\n    from . import decode\n")
    assert found == [(2, "virion.evaluation"), (3, "virion.data")]
    assert _layer_of(found[0][1])[1] > _layer_of(_module_name(probe))[1]


def test_no_backend_forced_and_no_import_fallbacks():
    """No `matplotlib.use` (breaks inline notebook plots) and no importlib outside the CLI's command list."""
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(SRC)
        assert "matplotlib.use(" not in text, f"{rel}: forces a matplotlib backend"
        if rel.parts[0] not in ("cli", "app") and rel.name != "__init__.py":
            assert "importlib.import_module" not in text, f"{rel}: import by name hides a broken import"


def test_import_virion_loads_no_keras():
    import subprocess
    import sys

    code = (
        "import sys, virion; virion.load; virion.train; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'matplotlib')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
