"""Every install level works (issue 9, B.11): the core install — an auditor who only scores predictions — runs
``fairfm evaluate``; every third-party import of a module is declared in the extra that module belongs to; a command
whose extra is missing says which one to install, in one line."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fairfm.cli import EXTRA_OF_MODULE

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fairfm"

#: Import name → distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "open_clip": "open_clip_torch",
                "segment_anything": "segment-anything", "pydantic_core": "pydantic",
                "umap": "umap-learn", "ot": "pot"}  # fmt: skip

#: The extras a module may import from (besides the core dependencies), by path prefix in src/fairfm; first match
#: wins, anything unlisted is core (metrics, evaluate, errors, tables, report, …).
MODULE_EXTRAS = [
    ("cli/datasets.py", {"data"}),
    ("cli/runs.py", {"results"}),
    ("cli/models.py", {"models", "data"}),
    ("cli/features.py", {"models", "data"}),
    ("cli/run.py", {"models", "data", "results"}),
    ("cli/demo.py", {"models", "data", "results"}),
    ("cli/sweep.py", {"models", "data", "results", "sweep"}),
    ("cli/select.py", {"models", "results"}),
    ("cli/ensemble.py", {"models", "data", "results"}),
    ("cli/report.py", {"report", "results"}),
    ("cli/compare.py", {"results"}),
    ("cli/analyze.py", {"report", "results", "data"}),
    ("data/", {"data"}),
    ("models/", {"models", "data"}),
    ("adapt/", {"models", "data", "results"}),
    ("results/", {"results"}),
    ("spec.py", {"results"}),
    ("usages/", {"models", "data", "results"}),  # imported by spec.py; the run functions, like runner.py's
    ("runner.py", {"models", "data", "results"}),
    ("demo.py", {"models", "data", "results", "report"}),
    ("sweep.py", {"models", "data", "results", "sweep"}),
    ("mitigate/", {"models", "results"}),
    ("select.py", {"models", "results"}),
    ("ensemble.py", {"models", "data", "results"}),
    ("report/tables.py", set()),  # the terminal tables of the core install's 'fairfm evaluate'
    ("report/document.py", set()),  # the document model and the Markdown/LaTeX renderers are core
    ("report/markdown.py", set()),
    ("report/", {"report", "results"}),
    ("analysis/", {"report", "results", "data"}),  # scikit-learn, umap-learn, matplotlib; reads the store
    ("cli/fl.py", {"federated", "models", "data", "results"}),
    ("federated/", {"federated", "models", "data", "results"}),
]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {extra: {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    return core, extras


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``try: … except ImportError`` (an optional import with its own fallback) or ``if TYPE_CHECKING``."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body and any(
            h.type is not None and "ImportError" in ast.unparse(h.type) for h in parent.handlers
        ):
            return True
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        node = parent
    return False


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        if not _guarded(node, parents):
            names.update(m.split(".")[0] for m in modules)
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("fairfm", "__future__")}


def _extras_of(relative: str) -> set[str]:
    return next((extras for prefix, extras in MODULE_EXTRAS if relative.startswith(prefix)), set())


def test_every_third_party_import_is_declared_in_its_modules_extra():
    core, extras = _declared()
    undeclared = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        allowed = core.union(*(extras[e] for e in _extras_of(relative)))
        for module in sorted(_third_party_imports(path)):
            distribution = DISTRIBUTION.get(module, module).lower().replace("_", "-")
            if distribution not in allowed:
                undeclared.append(f"{relative}: {module} ({distribution})")
    assert not undeclared, undeclared


def test_the_missing_extra_message_names_the_extra_that_declares_the_module():
    core, extras = _declared()
    imported = set().union(*(_third_party_imports(p) for p in PACKAGE.rglob("*.py")))
    for module in imported:
        distribution = DISTRIBUTION.get(module, module).lower().replace("_", "-")
        if distribution in core:
            continue
        assert module in EXTRA_OF_MODULE, f"{module}: not in fairfm.cli.EXTRA_OF_MODULE"
        assert distribution in extras[EXTRA_OF_MODULE[module]], (module, EXTRA_OF_MODULE[module])


def test_the_static_check_sees_a_click_import():
    # The case it exists for: fairfm.cli imports click, which must be a core dependency.
    core, _ = _declared()
    assert "click" in _third_party_imports(PACKAGE / "cli" / "__init__.py") and "click" in core


def _fresh_venv(where: Path) -> Path:
    """A venv without system site packages, with fairfm installed from a copy of this tree and no extras."""
    source = where / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # This interpreter's pip installs into the new venv (--python: no pip bootstrapped there); pip's default cache
    # makes it quick after the first time; no .pyc compilation of numpy/pandas/scipy; non-editable, as a user's.
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--quiet", "--disable-pip-version-check", "--no-input", "--no-compile", str(source)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def test_the_core_install_runs_fairfm_evaluate_and_names_missing_extras(tmp_path):
    import numpy as np
    import pandas as pd

    venv = _fresh_venv(tmp_path)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    pd.DataFrame({"label": y, "score": np.clip(rng.random(300) * 0.6 + 0.4 * y, 0, 1).round(4),
                  "sex": rng.choice(["F", "M"], 300)}).to_csv(tmp_path / "preds.csv", index=False)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    fairfm = str(venv / "bin" / "fairfm")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([fairfm, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "list",
                                "--format", "freeze"], capture_output=True, text=True, env=env).stdout.lower()  # fmt: skip
    assert "fairfm" in installed
    assert "torch" not in installed and "pillow" not in installed and "duckdb" not in installed

    out = tmp_path / "report.json"
    done = run("evaluate", "preds.csv", "--y-true", "label", "--y-score", "score", "--attr", "sex",
               "--bootstrap", "20", "--format", "json", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "auc_gap" in out.read_text()

    # Commands of a missing extra: one line naming the extra, no traceback.
    (tmp_path / "sweep.yaml").write_text("model: clip\n")
    for args, extra in ((("sweep", "sweep.yaml"), "results"),
                        (("datasets", "synth", "--out", "synth", "--n", "20", "--size", "16"), "data")):  # fmt: skip
        done = run(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert f"needs the '{extra}' extra" in done.stderr and f"pip install 'fairfm[{extra}]'" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("module", ["torch", "PIL.Image", "duckdb", "ray"])
def test_main_turns_a_missing_extra_into_one_line(module, monkeypatch, capsys):
    from fairfm import cli

    def missing(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    monkeypatch.setattr(cli, "_register_commands", missing)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    err = capsys.readouterr().err
    extra = EXTRA_OF_MODULE[module.split(".")[0]]
    assert exit_info.value.code == 1 and err.strip() == (
        f"error: this command needs the '{extra}' extra (module {module.split('.')[0]!r} is not installed): "
        f"pip install 'fairfm[{extra}]'")
