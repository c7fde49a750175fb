import pytest

from tests.metrics.helpers import make_data


@pytest.fixture(params=[0, 1, 2])
def data(request):
    return make_data(request.param)
