"""Mid-epoch resume: a small JSON-able loader state and the index sampler that replays it.

What decides an epoch's batches is (a) the random state the sampler draws from when the epoch
starts (the loader's ``generator``, or torch's global RNG when it is None, plus a sampler's own
generator), (b) a DistributedSampler's epoch, and (c) how many batches were already yielded.
We record (a) at the moment the sampler starts the epoch, which is after the iterator drew the
workers' base seed, so it is right with persistent workers too. Resuming restores (a) and (b)
and skips (c) batches in the *sampler*: skipped batches are never fetched, and batches that were
in flight but not yielded at save time are fetched again, so none is lost or delivered twice.

Random augmentations inside workers are not replayed exactly (their RNG has advanced by the
batches before the save point); the indices and their order are.
"""

from __future__ import annotations

import base64
from typing import Any, Iterator

import torch

from ..errors import ConfigError

__all__ = ["STATE_VERSION", "ResumableIndexSampler", "capture_rng", "restore_rng", "validate_state"]

STATE_VERSION = 1


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _generators(loader: Any) -> dict[str, torch.Generator | None]:
    """The random sources that shape the epoch's order; None stands for torch's global RNG."""
    gens: dict[str, torch.Generator | None] = {"loader": loader.generator}
    for name, sampler in (("sampler", loader.sampler), ("batch_sampler", getattr(loader.batch_sampler, "sampler", None))):
        g = getattr(sampler, "generator", None)
        if isinstance(g, torch.Generator) and g is not loader.generator:
            gens[name] = g
    return gens


def capture_rng(loader: Any) -> dict[str, str]:
    out = {}
    for name, g in _generators(loader).items():
        out[name] = _encode(g.get_state() if g is not None else torch.get_rng_state())
    return out


def restore_rng(loader: Any, saved: dict[str, str]) -> None:
    gens = _generators(loader)
    for name, text in saved.items():
        if name not in gens:
            raise ConfigError(f"loader state has RNG {name!r} but this loader has no such generator")
        g = gens[name]
        if g is None:
            torch.set_rng_state(_decode(text))
        else:
            g.set_state(_decode(text))


def validate_state(state: Any, num_batches: int | None) -> dict:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ConfigError(f"not a concurrent_dataloader state (version {STATE_VERSION}): {str(state)[:80]!r}")
    batches = state.get("batches_yielded")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise ConfigError(f"loader state: batches_yielded must be an int >= 0, got {batches!r}")
    if num_batches is not None and batches > num_batches:
        raise ConfigError(f"loader state: batches_yielded={batches} but an epoch has only {num_batches} batches")
    for key in ("rng", "pre_iterator_rng"):
        value = state.get(key)
        if value is not None and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            raise ConfigError(f"loader state: {key!r} must be null or a dict of base64 generator states")
    return state


class _RngSources:
    """The loader attributes that hold its random generators, without a reference to the loader."""

    __slots__ = ("generator", "sampler", "batch_sampler")

    def __init__(self, loader: Any) -> None:
        self.generator = loader.generator
        self.sampler = loader.sampler
        self.batch_sampler = loader.batch_sampler


class ResumableIndexSampler:
    """Wraps the loader's index sampler (or batch sampler); one-shot replay of a saved position.

    NOTE (ordering): the body of ``__iter__`` runs at the first ``next()``, i.e. after torch's
    iterator drew the base seed and before the sampler's own draw; that is where we record and
    restore the RNG state.
    """

    def __init__(self, inner: Any, loader: Any, pre_iterator_rng: dict[str, str]) -> None:
        self.inner = inner
        # See NOTE [ Shutdown ] in lifecycle.py: not the loader itself. A persistent iterator holds this sampler and the
        # loader holds the iterator; a cycle would leave the workers to the cyclic GC, which may
        # finalize their queues first and then wait 5 s per worker to join them.
        self.loader = _RngSources(loader)
        self.pre_iterator_rng = pre_iterator_rng  # valid for the first epoch of this iterator only
        self.pending: dict | None = None
        self.epoch_rng: dict[str, str] | None = None
        self.epochs_started = 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        pending, self.pending = self.pending, None
        if pending is not None and pending.get("rng"):
            restore_rng(self.loader, pending["rng"])
        self.epoch_rng = capture_rng(self.loader)
        self.epochs_started += 1
        self.skipped = pending["batches_yielded"] if pending is not None else 0
        it = iter(self.inner)
        for _ in range(self.skipped):
            next(it, None)
        yield from it
