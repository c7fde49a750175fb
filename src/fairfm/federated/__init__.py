"""Federated learning on Flower: aggregation math, client partitions and strategies.

The strategies import flwr (the ``federated`` extra), so they load on first use; the aggregation math and the
partitions need numpy and pandas only.
"""

from fairfm.federated.aggregation import (
    fair_lora_average,
    half_shared,
    sample_clients,
    server_ema,
    weighted_average,
)
from fairfm.federated.partition import ClientPartition, assign_clients

_STRATEGY_NAMES = ("STRATEGIES", "FederatedStrategy", "list_strategies", "make_strategy", "register_strategy")

__all__ = ["ClientPartition", "assign_clients", "fair_lora_average", "half_shared", "sample_clients",
           "server_ema", "weighted_average", *_STRATEGY_NAMES]


def __getattr__(name: str):
    if name in _STRATEGY_NAMES:
        from fairfm.federated import strategies

        return getattr(strategies, name)
    raise AttributeError(f"module 'fairfm.federated' has no attribute {name!r}")
