"""The spec's seed decides every random draw of a run, and a run leaves its caller's random state alone.

Model construction (peft's LoRA matrices, VPT prompts, adapters, heads, a scratch model's weights), dropout and
data order draw from torch's, numpy's and Python's global generators. Inside :func:`seeded` those are seeded from
the run's seed and restored afterwards, so a run gives the same numbers whatever ran before it in the process
(a ``local`` or ``pool`` sweep runs many cells in one process) and the caller's own random sequence goes on as if
the run had not happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one ``purpose`` of a run (independent streams for e.g. the run and its fine-tuning)."""
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch (CPU and every initialised CUDA device), numpy and ``random`` with ``seed``; restore all of
    them on exit."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
