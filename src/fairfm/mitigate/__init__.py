"""Unfairness mitigation methods, one module each, registered by name (see :mod:`fairfm.mitigate.base`).

``fairfm methods list`` shows them with what each needs; a run names one with ``method:`` and ``method_params:``.
"""

from fairfm.mitigate.base import (GroupContext, LossInputs, Method, MethodParams, Needs, ScoreSet, TrainContext,
                                  TrainHooks, build_method, get_method_class, list_methods, register_method)  # fmt: skip

__all__ = ["GroupContext", "LossInputs", "Method", "MethodParams", "Needs", "ScoreSet", "TrainContext", "TrainHooks",
           "build_method", "get_method_class", "list_methods", "register_method"]  # fmt: skip
