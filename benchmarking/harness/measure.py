"""Measuring a loader from outside: its process tree's peak PSS and CPU, polled with psutil while it
runs in a subprocess; and the decode+transform CPU per image (a micro-benchmark, in this process).

NOTE [ Outside measurement ]: every row (ours, stock torch, each peer) is one subprocess running one
epoch, and is measured here the same way:
- peak PSS: the largest sum of ``memory_full_info().pss`` over the tree (the runner and every
  descendant: DataLoader workers, their threads' memory), polled every ``pss_poll_s`` (0.5 s), in
  runs of its own: reading a process's PSS (``/proc/<pid>/smaps_rollup``) walks its page tables
  under its memory-map lock and stalls it. A loader with 2 worker processes has no slack to absorb
  that; 32 torch workers do. Polled at 20 Hz, as the harness first did, it cost ours 0.85x of its
  img/s and stock torch nothing measurable; every 0.5 s still 0.94x (``python -m
  benchmarking.misc.poll_ab``, ``docs/results/poll_ab.json``). So the img/s rounds read no PSS, and
  ``measure.pss_rounds`` extra runs per point measure the peak (a plateau: 0.5 s finds it);
- CPU: each poll records the tree's cumulative CPU, ``cpu_times()`` user+system plus the reaped
  children's (so a worker that exits between polls is not lost); the CPU of the steady part of the
  epoch is the difference between the samples at the runner's ``t_first_batch`` and ``t_end``.
  ``resource.getrusage(RUSAGE_CHILDREN)`` gives the whole process's CPU (imports included).
"""

from __future__ import annotations

import json
import resource
import subprocess
import tempfile
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

__all__ = ["TreeSample", "run_measured", "cpu_between", "measure_decode_ms"]

TreeSample = tuple[float, float, float]  # (time.time(), cumulative CPU s, PSS bytes)


def _tree_sample(root: Any, cache: dict[int, Any], pss: bool = True) -> TreeSample | None:
    """One poll of the process tree under ``root`` (a psutil.Process); None once it is gone.
    Without ``pss`` the sample's PSS is 0 (only the cheap CPU counters are read)."""
    import psutil

    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return None
    cpu = total_pss = 0.0
    for proc in procs:
        proc = cache.setdefault(proc.pid, proc)  # keep one Process per pid (psutil caches its create time)
        try:
            with proc.oneshot():
                t = proc.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                if pss:
                    total_pss += proc.memory_full_info().pss
        except psutil.Error:
            continue
    return time.time(), cpu, total_pss


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None, poll_s: float = 0.05,
                 pss_poll_s: float | None = 0.5, timeout: float = 600.0) -> dict[str, Any]:
    """Run ``cmd`` to completion while polling its tree (NOTE [ Outside measurement ]).

    CPU is polled every ``poll_s``, PSS every ``pss_poll_s`` (None: never, peak_pss_mb is then 0).
    Returns ``{"rc", "result" (the last JSON line of stdout, or None), "stderr" (its tail),
    "peak_pss_mb", "samples", "cpu_total_s", "timed_out"}``.
    """
    import psutil

    from benchmarking.peers import parse_result

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=cwd)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)  # type: ignore
        reader.start()
        samples: list[TreeSample] = []
        cache: dict[int, Any] = {}
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            root = None
        deadline = time.monotonic() + timeout
        timed_out = False
        next_pss = time.monotonic()  # the first poll reads PSS too
        while proc.poll() is None:
            if root is not None:
                with_pss = pss_poll_s is not None and time.monotonic() >= next_pss
                s = _tree_sample(root, cache, with_pss)
                if s is not None:
                    samples.append(s)
                    if with_pss:
                        next_pss = time.monotonic() + pss_poll_s
            if time.monotonic() > deadline:
                timed_out = True
                _kill_tree(proc)
                break
            time.sleep(poll_s)
        proc.wait()
        reader.join(timeout=10)
        err.seek(0)
        stderr = err.read()[-3000:]
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_total = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if samples:
        # the final sample: everything the tree spent (reaped into our RUSAGE_CHILDREN)
        samples.append((time.time(), max(cpu_total, samples[-1][1]), 0.0))
    return {"rc": proc.returncode, "result": parse_result("".join(out)), "stderr": stderr,
            "peak_pss_mb": max((s[2] for s in samples), default=0.0) / 2**20, "samples": samples,
            "cpu_total_s": cpu_total, "timed_out": timed_out}


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    for p in [*kids]:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.kill()


def cpu_between(samples: list[TreeSample], t0: float, t1: float) -> float | None:
    """The tree's CPU seconds between wall-clock instants ``t0`` and ``t1`` (linear between polls)."""
    if len(samples) < 2 or t1 <= t0:
        return None
    times = [s[0] for s in samples]

    def at(t: float) -> float:
        i = bisect_left(times, t)
        if i <= 0:
            return samples[0][1]
        if i >= len(samples):
            return samples[-1][1]
        (ta, ca, _), (tb, cb, _) = samples[i - 1], samples[i]
        return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 1.0)

    return max(0.0, at(t1) - at(t0))


def write_spec(doc: dict[str, Any], where: Path) -> Path:
    from concurrent_dataloader._atomic import atomic_write_bytes

    where.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(where, json.dumps(doc, default=str).encode())
    return where


def measure_decode_ms(data_dir: Path, transform: str, decoder: str = "pil", n: int = 60,
                      pixels: Any = None) -> float:
    """CPU ms to decode + transform one image, single-threaded, in this process.

    By default from the JPEG bytes (what every format storing the original bytes decodes);
    with ``pixels`` (a memmap/hdf5 conversion, :class:`.prepare.FormatData`) from its stored
    pixels, through its reader.
    """
    import torch

    from concurrent_dataloader.datasets import decode_image

    from .build import make_transform

    tf = make_transform(transform, decoder)
    if pixels is not None:
        from concurrent_dataloader.formats.converted import open_converted

        reader = open_converted(str(pixels.root), tf)
        try:
            idx = list(range(0, len(reader), max(1, len(reader) // n)))[:n]
            raws = [(i, reader.fetch_raw(i)) for i in idx]
        finally:
            reader.close()

        def one(item: tuple[int, Any]) -> None:
            reader.decode(*item)
    else:
        keys = json.loads((data_dir / "index-scratch-train.json").read_text())
        step = max(1, len(keys) // n)
        raws = [(0, (data_dir / k).read_bytes()) for k in keys[::step][:n]]

        def one(item: tuple[int, Any]) -> None:
            img = decode_image(item[1], decoder) if decoder != "pil" else decode_image(item[1])
            if tf is not None:
                tf(img)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        for item in raws[:5]:
            one(item)
        c0 = time.process_time()
        for item in raws:
            one(item)
        return (time.process_time() - c0) / len(raws) * 1e3
    finally:
        torch.set_num_threads(threads)
