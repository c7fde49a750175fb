import pytest

from tests.report.stored_runs import build_store


@pytest.fixture(scope="session")
def report_store(tmp_path_factory):
    """(Store, ids): the designed stored runs (tests/report/stored_runs.py), built once per session; read-only."""
    return build_store(tmp_path_factory.mktemp("report_store") / "store")
