"""Who am I in a distributed conversion, and how do the processes wait for each other.

Rank and world size come, in order, from explicit arguments, an initialized
``torch.distributed`` process group, torchrun's ``RANK``/``WORLD_SIZE``, or SLURM's
``SLURM_PROCID``/``SLURM_NTASKS`` (``SLURM_NPROCS``). With one process nothing is initialized
and the barrier is a no-op (the seed divided by zero there).

When several processes run and no process group exists yet, a gloo group is created from the
usual ``MASTER_ADDR``/``MASTER_PORT`` environment (CPU only; no GPU needed). It stays
initialized afterwards, so later conversions in the same processes reuse it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

from ...errors import ConfigError

__all__ = ["DistContext", "resolve_dist", "split_files"]


def split_files(total: int, rank: int, world: int) -> range:
    """The contiguous block of file numbers ``rank`` converts: no overlap, no gap, any ``total``."""
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is not in range for num_replicas={world}")
    return range(total * rank // world, total * (rank + 1) // world)


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None
    return None


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    owns_group: bool = False
    _torch_dist: object = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """All ranks meet here. NOTE: a rank that fails before reaching it makes the others
        wait until the process-group timeout (``dist_timeout``); their finished files are kept
        and a rerun resumes."""
        if self.world > 1 and self._torch_dist is not None:
            self._torch_dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when every rank reports ``ok`` (one all-reduce), so one rank's failure
        stops all of them at the same point instead of leaving them in a barrier."""
        if self.world == 1 or self._torch_dist is None:
            return ok
        import torch

        flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
        self._torch_dist.all_reduce(flag)
        return int(flag.item()) == 0

    def close(self) -> None:
        """Nothing to release. NOTE: a gloo group we created stays initialized for the life of
        the process: destroying it and creating another one on torchrun's shared store can
        hang on stale rendezvous keys, and a later conversion simply reuses it."""


def resolve_dist(dist: bool, rank: int | None, num_replicas: int | None,
                 timeout: datetime.timedelta | None = None) -> DistContext:
    if not dist:
        if rank not in (None, 0) or num_replicas not in (None, 1):
            raise ConfigError("rank/num_replicas were given but dist=False; pass dist=True for a distributed conversion")
        return DistContext()

    import torch.distributed as tdist

    initialized = tdist.is_available() and tdist.is_initialized()
    if initialized:
        pg_rank, pg_world = tdist.get_rank(), tdist.get_world_size()
        if (rank is not None and rank != pg_rank) or (num_replicas is not None and num_replicas != pg_world):
            raise ConfigError(f"rank={rank}/num_replicas={num_replicas} disagree with the initialized process group "
                              f"(rank {pg_rank} of {pg_world})")
        return DistContext(pg_rank, pg_world, False, tdist)

    if rank is None:
        rank = _env_int("RANK", "SLURM_PROCID")
    if num_replicas is None:
        num_replicas = _env_int("WORLD_SIZE", "SLURM_NTASKS", "SLURM_NPROCS")
    if rank is None and num_replicas is None:
        rank, num_replicas = 0, 1
    if rank is None or num_replicas is None:
        raise ConfigError(f"dist=True needs both rank and num_replicas (got rank={rank}, num_replicas={num_replicas}); "
                          "pass them, or run under torchrun/SLURM")
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ConfigError(f"rank {rank} is not in range for num_replicas={num_replicas}")
    if num_replicas == 1:
        return DistContext(0, 1)

    if not tdist.is_available():
        raise ConfigError("dist=True with several processes needs torch.distributed, which this torch build lacks")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ConfigError(f"dist=True with {num_replicas} processes and no initialized process group: set "
                          f"{' and '.join(missing)} (torchrun does), or call torch.distributed.init_process_group first")
    tdist.init_process_group("gloo", init_method="env://", rank=rank, world_size=num_replicas,
                             timeout=timeout or datetime.timedelta(hours=24))
    return DistContext(rank, num_replicas, True, tdist)
