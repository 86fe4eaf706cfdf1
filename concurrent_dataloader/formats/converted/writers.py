"""Offline conversion: one output file group written under temporary names, then renamed."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..._atomic import temp_name

__all__ = ["FileWriter"]

class FileWriter(ABC):
    """Writes one output file group (images_n, labels_n, extras) under temporary names.

    ``commit`` closes and renames everything into place; ``abort`` deletes the temporaries.
    A file group counts as done only when all its final names exist.
    """

    def __init__(self, finals: dict[str, Path], n_items: int) -> None:
        self.finals = finals
        self.temps = {role: temp_name(p) for role, p in finals.items()}
        self.n_items = n_items
        self.remaining = n_items

    def write(self, images: Any, labels: Any) -> None:
        if len(images) > self.remaining:
            raise RuntimeError(f"{self.finals['images']}: {len(images)} more samples than the {self.n_items} planned")
        self._write(images, labels)
        self.remaining -= len(images)

    @abstractmethod
    def _write(self, images: Any, labels: Any) -> None: ...

    @abstractmethod
    def _close(self) -> None:
        """Flush and close the temporary files (called once, before renaming)."""

    def commit(self) -> None:
        if self.remaining:
            raise RuntimeError(f"{self.finals['images']}: {self.remaining} samples missing at commit")
        self._close()
        # Images last: a file group is complete only when every final name exists.
        for role in sorted(self.temps, key=lambda r: r == "images"):
            os.replace(self.temps[role], self.finals[role])

    def abort(self) -> None:
        try:
            self._close()
        except Exception:
            pass
        for tmp in self.temps.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
