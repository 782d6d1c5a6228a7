"""The one place torch is imported: lazily, so that commands which need no tensors start fast,
and without the "Failed to initialize NumPy" warning torch prints where numpy is absent
(belle-decrypt never converts tensors to numpy, so that warning would only be noise)."""

from __future__ import annotations

import warnings
from types import ModuleType


def import_torch() -> ModuleType:
    """Import torch quietly and return the module."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        import torch
    return torch
