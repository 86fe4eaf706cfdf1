"""Running the grid: data, server, peers' preparation, then interleaved rounds of every point, each a
measured subprocess (NOTE [ Outside measurement ] in :mod:`.measure`), then the checks.

NOTE [ Rounds ]: rounds run over the whole grid (round 1 of every point, then round 2, ...), never
back to back, so a burst of load from elsewhere on the machine hits different loaders rather than
every round of one. A point reports the median of its rounds, with min and max; the checks pair
rounds (NOTE [ Verdicts ] in :mod:`.checks`). Checks that come out inconclusive or close to their
threshold get ``confirm_rounds`` more rounds of the points they compare.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .checks import close_calls, ratios_and_checks
from .config import BUCKET, CREDS, FIXED_SIZE, FORMAT_BUCKET, PEER_LOADERS, BenchConfig, RunSpec
from .measure import cpu_between, measure_decode_ms, run_measured, write_spec
from .prepare import FormatData, peer_spec, prepare_formats, upload_formats, write_index

__all__ = ["run_benchmark", "aggregate", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_ROUND_METRICS = ("img_per_s", "epoch_img_per_s", "first_batch_s", "peak_pss_mb", "loader_cpu_ms_per_img",
                  "server_gets_per_s", "server_cpu_ms_per_img", "server_cpu_ms_per_get", "server_core_util",
                  "server_gets", "server_peak_in_flight", "images_read", "seconds")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("AWS_ACCESS_KEY_ID", CREDS["aws_access_key_id"])
    env.setdefault("AWS_SECRET_ACCESS_KEY", CREDS["aws_secret_access_key"])
    env.setdefault("AWS_REGION", CREDS["region_name"])
    env.setdefault("AWS_DEFAULT_REGION", CREDS["region_name"])
    return env


class _Session:
    """One benchmark run's shared state: the config, data, server and where specs go."""

    def __init__(self, cfg: BenchConfig, data_dir: Path, manifest: dict[str, Any], formats: dict[str, FormatData],
                 server: Any, log: Callable[[str], None]) -> None:
        self.cfg, self.data_dir, self.formats, self.server, self.log = cfg, data_dir, formats, server, log
        self.total_images = int(manifest["images"]) if "images" in manifest else None
        self.specs_dir = data_dir / "bench-specs"
        self.peer_work = data_dir / "peers-work"
        self.env = _env()
        self.peer_status: dict[tuple[str, int], str] = {}  # (peer, images) -> "ok" / "n/a: ..." / "error: ..."
        self.peer_prepare: dict[str, Any] = {}

    def images_for(self, spec: RunSpec) -> int:
        n = spec.images or self.cfg.images
        return n if n and (self.total_images is None or n < self.total_images) else 0

    # -- peers -------------------------------------------------------------------------------
    def peer_doc(self, spec: RunSpec) -> dict[str, Any]:
        images = self.images_for(spec) or int(self.total_images or 0)
        index = write_index(self.data_dir, self.data_dir / "peers-index.json")
        return peer_spec(spec, self.server.endpoint_url, index, self.peer_work, images, self.cfg.formats,
                         self.cfg.seed)

    def prepare_peer(self, spec: RunSpec) -> str:
        """The peer's ``prepare`` (once per peer and image count): "ok", or why its rows cannot run."""
        from benchmarking.peers import NOT_INSTALLED, peer_python

        doc = self.peer_doc(spec)
        key = (spec.loader, doc["num_images"])
        if key in self.peer_status:
            return self.peer_status[key]
        python = peer_python(spec.loader)
        if not (REPO_ROOT / "benchmarking" / "peers" / f"{spec.loader}.py").is_file():
            status = f"n/a: no runner benchmarking/peers/{spec.loader}.py"
        elif python is None:
            status = "n/a: not installed (bash benchmarking/peers/setup.sh)"
        else:
            self.server.configure(latency_ms=0.0, jitter_ms=0.0)
            path = write_spec(doc, self.specs_dir / f"{spec.loader}-prepare.json")
            t0 = time.perf_counter()
            res = run_measured([python, "-m", f"benchmarking.peers.{spec.loader}", "prepare", "--spec", str(path)],
                               env=self.env, cwd=str(REPO_ROOT), poll_s=1.0, timeout=self.cfg.run_timeout_s)
            out = res["result"] or {}
            if res["rc"] == NOT_INSTALLED:
                status = "n/a: not installed (bash benchmarking/peers/setup.sh)"
            elif res["rc"] != 0 or "error" in out:
                status = f"error: prepare: {out.get('error') or res['stderr'][-300:]}"
            else:
                status = "ok"
                self.peer_prepare[spec.loader] = {**out, "wall_s": round(time.perf_counter() - t0, 1)}
                self.log(f"peer {spec.loader}: {'reused' if out.get('skipped') else 'prepared'} its data "
                         f"({out.get('objects', '?')} objects, {out.get('bytes', 0) / 1e6:.0f} MB) in "
                         f"{time.perf_counter() - t0:.1f} s")
        self.peer_status[key] = status
        return status

    # -- one round of one point --------------------------------------------------------------
    def measure(self, spec: RunSpec, round_: int, pss: bool = False) -> dict[str, Any]:
        """One run of ``spec``. PSS is read only with ``pss`` (a memory round): reading it slows the
        loader (NOTE [ Outside measurement ] in measure.py), so img/s rounds never do."""
        cfg, server = self.cfg, self.server
        row: dict[str, Any] = {"round": round_, "load_avg": round(os.getloadavg()[0], 2)}
        if spec.is_peer:
            status = self.prepare_peer(spec)
            if status != "ok":
                return {**row, "status": status}
            from benchmarking.peers import peer_python

            doc: dict[str, Any] = self.peer_doc(spec)
            cmd = [str(peer_python(spec.loader)), "-m", f"benchmarking.peers.{spec.loader}", "run"]
        else:
            doc = {"run": asdict(spec), "data_dir": str(self.data_dir),
                   "endpoint": server.endpoint_url if server is not None else None,
                   "formats": {k: {**asdict(v), "root": str(v.root)} for k, v in self.formats.items()
                               if k == spec.format},
                   "format_settings": asdict(cfg.formats), "seed": cfg.seed,
                   "loader_timeout_s": cfg.loader_timeout_s, "images": self.images_for(spec)}
            cmd = [sys.executable, "-m", "benchmarking.harness.runner", "run"]
        path = write_spec(doc, self.specs_dir / f"run-{os.getpid()}.json")
        if server is not None:
            server.configure(latency_ms=spec.latency_ms, jitter_ms=cfg.jitter_ms if spec.latency_ms > 0 else 0.0)
            server.reset_stats()
        res = run_measured(cmd + ["--spec", str(path)], env=self.env, cwd=str(REPO_ROOT), poll_s=cfg.poll_s,
                           pss_poll_s=cfg.pss_poll_s if pss else None,
                           timeout=cfg.run_timeout_s)
        stats = server.stats() if server is not None else None
        out = res["result"] or {}
        if res["timed_out"]:
            return {**row, "status": f"error: timed out after {cfg.run_timeout_s:g} s"}
        if res["rc"] != 0 or "error" in out or not out.get("images"):
            why = out.get("error") or (res["stderr"].strip().splitlines() or [f"exit code {res['rc']}"])[-1]
            return {**row, "status": f"error: {why[:300]}"}
        images, wall, first = int(out["images"]), float(out["wall_s"]), float(out["first_batch_s"])
        ips, cpu, window = _steady(spec, out, res["samples"])
        row.update(status="ok", images_read=images, seconds=round(wall, 3), img_per_s=ips, epoch_img_per_s=images / wall,
                   steady_window=window,
                   first_batch_s=first, peak_pss_mb=res["peak_pss_mb"] if pss else None, sampling=out.get("sampling", "?"),
                   loader_cpu_ms_per_img=cpu if cpu is not None else res["cpu_total_s"] / images * 1e3,
                   cpu_whole_process=cpu is None, process_cpu_s=round(res["cpu_total_s"], 2))
        if stats is not None and spec.storage == "s3":
            gets = max(1, stats["gets"])
            row.update(server_gets=stats["gets"], server_gets_per_s=stats["gets"] / wall,
                       server_bytes_mb=stats["bytes_out"] / 1e6,
                       server_cpu_ms_per_img=stats["server_cpu_s"] / images * 1e3,
                       server_cpu_ms_per_get=stats["server_cpu_s"] / gets * 1e3,
                       server_core_util=stats["server_cpu_s"] / wall, server_peak_in_flight=stats["peak_in_flight"])
        return row


def _steady(spec: RunSpec, out: dict[str, Any], samples: list) -> tuple[float, float | None, str]:
    """img/s and CPU ms/img of the steady part of the epoch, and which window was used.

    NOTE [ Steady window ]: with k worker processes, batches come in rounds of k (each worker
    delivers every k-th batch, and the k workers start together), so the first batch is followed by
    a burst of k-1 more. The window therefore starts at the k-th batch (the end of the first round)
    and runs to the last; a run needs at least two rounds for it (``images >= 2 k batch_size``).
    Without per-batch times (an older runner) it starts at the first batch.
    """
    images, wall, first = int(out["images"]), float(out["wall_s"]), float(out["first_batch_s"])
    arrivals = out.get("t_batches") or []
    k = max(1, spec.num_workers)
    if len(arrivals) > k:
        (t0, n0), (t1, n1) = arrivals[k - 1], arrivals[-1]
        window = f"batches {k}-{len(arrivals)}"
    elif out.get("t_first_batch") and out.get("t_end"):
        (t0, n0), (t1, n1) = (float(out["t_first_batch"]), spec.batch_size), (float(out["t_end"]), images)
        window = "after the first batch"
    else:
        steady = images - spec.batch_size
        return (steady / (wall - first) if steady > 0 and wall > first else images / wall), None, "whole epoch"
    if n1 <= n0 or t1 <= t0:
        return images / wall, None, "whole epoch"
    cpu_s = cpu_between(samples, t0, t1)
    return (n1 - n0) / (t1 - t0), (cpu_s / (n1 - n0) * 1e3 if cpu_s is not None else None), window


def aggregate(spec: RunSpec, rounds: list[dict[str, Any]],
              memory_rounds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One row per grid point: medians of its rounds (with min and max img/s); the status is "ok" only
    when every round was, else the first failure. ``peak_pss_mb`` comes from the memory rounds."""
    row: dict[str, Any] = {**asdict(spec), "rounds": rounds, "memory_rounds": memory_rounds or []}
    bad = [r for r in rounds if r.get("status") != "ok"]
    good = [r for r in rounds if r.get("status") == "ok"]
    row["status"] = bad[0]["status"] if bad else ("ok" if good else "not run")
    row["rounds_ok"] = len(good)
    if good:
        for k in _ROUND_METRICS:
            vals = [r[k] for r in good if r.get(k) is not None]
            if vals:
                row[k] = statistics.median(vals)
        pss = [r["peak_pss_mb"] for r in memory_rounds or [] if r.get("status") == "ok" and r.get("peak_pss_mb")]
        if pss:
            row["peak_pss_mb"] = statistics.median(pss)
        row["img_per_s_min"] = min(r["img_per_s"] for r in good)
        row["img_per_s_max"] = max(r["img_per_s"] for r in good)
        row["img_per_s_rounds"] = [round(r["img_per_s"], 1) for r in good]
        row["sampling"] = good[0].get("sampling")
        row["cpu_whole_process"] = any(r.get("cpu_whole_process") for r in good)
    return row


def run_benchmark(cfg: BenchConfig, data_root: Path, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole grid. Returns ``{"rows", "checks", "ceiling", "client_cpu", "decode_ms", ...}``."""
    from tqdm import tqdm

    from benchmarking.make_synthetic import SyntheticSpec, make_synthetic
    from benchmarking.s3_bench import client_cpu_subprocess, server_ceiling
    from benchmarking.s3_server import ServerProcess

    ds_cfg = dict(cfg.dataset)
    data_dir = Path(ds_cfg.pop("dir", "")) if ds_cfg.get("dir") else None
    synth = SyntheticSpec(**{**ds_cfg, "seed": cfg.seed})
    if data_dir is None:
        data_dir = data_root / (f"synthetic-{synth.train}x{synth.width}x{synth.height}-{synth.classes}c-"
                                f"{synth.target_kb:g}kb-s{synth.seed}")
    manifest = make_synthetic(data_dir, synth, progress=progress)
    manifest.setdefault("images", synth.train)
    log(f"dataset: {manifest['images']} JPEGs, mean {manifest.get('mean_kb')} KB, in {data_dir}")
    formats = prepare_formats(data_dir, {r.format for r in cfg.runs if not r.is_peer}, cfg.formats,
                              progress=progress, log=log)
    s3_formats = {r.format for r in cfg.runs if r.storage == "s3" and r.format not in ("jpeg", "peer")}
    needs_s3 = any(r.storage == "s3" for r in cfg.runs)
    buckets: dict[str, Any] = {BUCKET: data_dir, **({FORMAT_BUCKET: None} if s3_formats else {})}
    server = ServerProcess(buckets=buckets, seed=cfg.seed) if needs_s3 else None
    out: dict[str, Any] = {"config": cfg.name, "dataset": manifest, "rows": [], "ceiling": None, "client_cpu": {},
                           "decode_ms": {}, "repeats": cfg.repeats, "cpu_count": os.cpu_count(), "formats": {
                               name: {"files": len(fd.files), "size_mb": round(fd.size_bytes / 1e6, 1),
                                      "images": fd.images, "make_img_per_s": round(fd.images / max(fd.seconds, 1e-9)),
                                      "made_now": fd.made_now, "path": str(fd.root)}
                               for name, fd in formats.items()}}
    session = _Session(cfg, data_dir, manifest, formats, server, log)
    try:
        keys = json.loads((data_dir / "index-s3-train.json").read_text())[:256]
        if server is not None:
            out["ceiling"] = c = server_ceiling(server, BUCKET, keys, cfg.ceiling_seconds)
            log(f"server ceiling: {c['gets_per_s']:,.0f} GET/s at 0 ms (server CPU {c['server_cpu_ms_per_get']:.3f} "
                f"ms/GET, {c['server_core_utilisation']:.0%} of a core; CPU-bound limit "
                f"{c['cpu_bound_gets_per_s']:,.0f} GET/s)")
            for client in cfg.client_cpu_clients:
                r = client_cpu_subprocess(client, server.endpoint_url, BUCKET, keys, cfg.client_cpu_gets, 16)
                out["client_cpu"][client] = r["cpu_ms_per_get"]
            if out["client_cpu"]:
                log("client CPU per GET: " + ", ".join(f"{k} {v:.3f} ms" for k, v in out["client_cpu"].items()))
            if s3_formats:
                secs = upload_formats(server, formats, s3_formats, progress=progress)
                log(f"uploaded {', '.join(sorted(s3_formats))} to the server's in-memory bucket in {secs:.1f} s")
        for t, d in sorted({(r.transform, r.decoder) for r in cfg.runs if r.format not in FIXED_SIZE}):
            try:
                out["decode_ms"][_decode_name(t, d)] = measure_decode_ms(data_dir, t, d)
            except Exception as exc:  # e.g. a decoder this version of the package lacks: its rows say so
                log(f"decode+transform {t}/{d}: not measured ({type(exc).__name__}: {exc})")
        for t in sorted({r.transform for r in cfg.runs if r.format in FIXED_SIZE}):
            pixels = next(formats[f] for f in FIXED_SIZE if f in formats)
            out["decode_ms"][t + "+pixels"] = measure_decode_ms(data_dir, t, pixels=pixels)
        if out["decode_ms"]:
            log("decode+transform CPU per image: " + ", ".join(f"{k} {v:.2f} ms" for k, v in out["decode_ms"].items()))
        for spec in dict.fromkeys(s for s in cfg.runs if s.is_peer):
            session.prepare_peer(spec)
        out["peer_prepare"] = session.peer_prepare

        attempts: dict[RunSpec, list[dict[str, Any]]] = {r: [] for r in cfg.runs}
        memory: dict[RunSpec, list[dict[str, Any]]] = {r: [] for r in cfg.runs}
        out["load_avg_start"] = os.getloadavg()

        def rounds(specs: list[RunSpec], n: int, desc: str, into: dict[RunSpec, list[dict[str, Any]]],
                   pss: bool = False) -> None:
            """``n`` rounds over ``specs``, appended to ``into``; ``pss``: memory rounds (peak PSS in runs
            of their own, see _Session.measure), only for points with an img/s round that worked."""
            bar = tqdm(total=len(specs) * n, desc=desc, unit="run", disable=not progress)
            for _ in range(n):
                for spec_ in specs:
                    bar.set_postfix_str(f"{spec_.storage} {spec_.latency_ms:g}ms {spec_.label()}")
                    done, measured = into[spec_], attempts[spec_]
                    if (measured and str(measured[0].get("status", "")).startswith("n/a")) or \
                            (pss and not any(r.get("status") == "ok" for r in measured)):
                        bar.update(1)  # not installed / not applicable / nothing to measure: do not retry
                        continue
                    try:
                        row = session.measure(spec_, len(done), pss=pss)
                    except Exception as exc:  # one broken point must not lose the others
                        row = {"round": len(done), "status": f"error: {type(exc).__name__}: {str(exc)[:300]}"}
                    done.append(row)
                    bar.update(1)
            bar.close()

        rounds(cfg.runs, cfg.repeats, cfg.name, attempts)
        rounds(cfg.runs, cfg.pss_rounds, "memory", memory, pss=True)
        rows = [aggregate(s, attempts[s], memory[s]) for s in cfg.runs]
        out["confirmed"] = []
        if cfg.confirm_rounds:
            close = close_calls(ratios_and_checks(rows, cfg.targets, out["client_cpu"]), cfg.confirm_margin)
            specs = list(dict.fromkeys(s_ for c in close for s_ in c["runs"] if s_ in attempts))
            if specs:
                log(f"{len(close)} target(s) inconclusive or within {cfg.confirm_margin:.0%} of the threshold: "
                    f"{cfg.confirm_rounds} more round(s) of the {len(specs)} runs they compare")
                rounds(specs, cfg.confirm_rounds, "confirm", attempts)
                out["confirmed"] = [c["check"] for c in close]
                rows = [aggregate(s, attempts[s], memory[s]) for s in cfg.runs]
        out["load_avg_end"] = os.getloadavg()
        for row in rows:
            _split_cpu(row, out)
        out["rows"] = rows
    finally:
        if server is not None:
            server.stop()
    out["checks"] = ratios_and_checks(out["rows"], cfg.targets, out["client_cpu"])
    for c in out["checks"]:
        c["runs"] = [asdict(r) for r in c.get("runs", [])]
    return out


def _decode_name(transform: str, decoder: str) -> str:
    return transform if decoder == "pil" else f"{transform}/{decoder}"


def _client_for(row: dict[str, Any]) -> str | None:
    """The client micro-benchmark that matches a row's per-image GETs (None: no GET per image)."""
    if row["storage"] != "s3" or row["loader"] in PEER_LOADERS or row.get("format") == "shards":
        return None
    impl = "async" if row["loader"] == "ours-asyncio" else "sync"
    return f"lean-{impl}" if row["s3_client"] == "lean" else ("aiobotocore" if impl == "async" else "botocore")


def _split_cpu(row: dict[str, Any], out: dict[str, Any]) -> None:
    """CPU ms per image split into client (S3 GET), decode+transform, and the rest (loader, IPC, collate)."""
    if row.get("status") != "ok" or row["loader"] in PEER_LOADERS:
        return
    key = row["transform"] + "+pixels" if row.get("format") in FIXED_SIZE else _decode_name(row["transform"],
                                                                                             row.get("decoder", "pil"))
    decode = out["decode_ms"].get(key)
    client_name = _client_for(row)
    client = out["client_cpu"].get(client_name) if client_name else (0.0 if row["storage"] == "scratch" else None)
    row["decode_ms_per_img"] = decode
    row["client_ms_per_img"] = client
    row["ceiling_gets_per_s"] = (out.get("ceiling") or {}).get("gets_per_s")
    if decode is not None and row.get("loader_cpu_ms_per_img") is not None:
        row["other_ms_per_img"] = row["loader_cpu_ms_per_img"] - decode - (client or 0.0)
