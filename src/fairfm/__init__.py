"""fairfm — measure and improve the fairness of medical-imaging foundation models.

Sub-packages are imported on demand so that ``import fairfm.metrics`` stays light (no torch).
"""

__version__ = "0.1.0"
