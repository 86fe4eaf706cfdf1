"""The seed's import path: ``from benchmarking.misc.init_benchmarking import get_dataset``.

The implementation lives in :mod:`concurrent_dataloader.datasets`; this module re-exports it so
existing training scripts keep working.
"""

from concurrent_dataloader.datasets import get_dataset

__all__ = ["get_dataset"]
