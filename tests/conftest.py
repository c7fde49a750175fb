"""Test-wide settings."""

import os

import pytest
from hypothesis import settings

# CI replays the same examples every run (a red CI must be reproducible); locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Point every weights cache at empty folders, so no test sees (or depends on) a real cache."""
    home = tmp_path_factory.mktemp("caches")
    for name in ("HF_HUB_CACHE", "TORCH_HOME", "FAIRFM_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``fairfm ARGS`` in-process, through ``main`` (so exit codes and one-line errors are what a user sees):
    (exit code, stdout, stderr)."""
    from fairfm.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
