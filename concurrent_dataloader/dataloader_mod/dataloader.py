"""Seed import path: ``from concurrent_dataloader.dataloader_mod.dataloader import DataLoader``."""

from ..loader.dataloader import DataLoader

__all__ = ["DataLoader"]
