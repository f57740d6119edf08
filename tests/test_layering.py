"""The two packages' boundary: ``training`` uses ``napari_gitseg``, never the other way round, and no
module imports another module's private names."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str):
    """(file, line, imported module, imported name or None) of every import in ``package``."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, node.lineno, alias.name, None
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    yield path, node.lineno, "." * node.level + (node.module or ""), alias.name


def test_the_plugin_never_imports_the_trainer():
    found = [
        f"{p.relative_to(ROOT)}:{line} {module}"
        for p, line, module, _ in _imports("napari_gitseg")
        if module.split(".")[0] == "training"
    ]
    assert found == []


def test_the_plugin_and_its_command_line_load_without_the_trainer():
    code = (
        "import json, sys, napari_gitseg.cli, napari_gitseg.retrain, napari_gitseg.jobs, "
        "napari_gitseg.events; napari_gitseg.cli.build_parser(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    # build_parser loads the trainer's commands through the gitseg.commands entry point, nothing else
    assert set(json.loads(out.strip().splitlines()[-1])) <= {"training", "training.commands"}


def test_no_module_imports_another_modules_private_names():
    found = []
    for package in ("napari_gitseg", "training"):
        for path, line, module, name in _imports(package):
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            folder = path.parent if module.startswith(".") else ROOT / module.replace(".", "/")
            if (folder / f"{name}.py").is_file() or (folder / name).is_dir():
                continue  # a package's own private submodule
            found.append(f"{path.relative_to(ROOT)}:{line} from {module} import {name}")
    assert found == []
