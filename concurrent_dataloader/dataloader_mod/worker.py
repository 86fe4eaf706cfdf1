"""Seed import path: ``from concurrent_dataloader.dataloader_mod.worker import _worker_loop``."""

from ..loader.worker import _worker_loop

__all__ = ["_worker_loop"]
