"""The targets, evaluated on the rows of a run.

NOTE [ Verdicts ]: a row holds every round of its grid point (rounds are interleaved over the grid, so
round *i* of two points ran close in time, under similar load from elsewhere). A check compares two
rows: its value is the ratio of their medians, and its spread is the range of the per-round ratios
(round *i* of one over round *i* of the other). Then, for a ``>=`` target:

- **PASS** when even the lowest per-round ratio meets the target;
- **FAIL** when even the highest misses it;
- **inconclusive** otherwise: the margin is inside the rounds' spread;
- **missing** when a row the check needs is absent or not installed, **error** when it errored in
  any round.

(``<=`` targets mirror this.) ``python -m benchmarking.run --check`` exits non-zero unless every
check passes (see :func:`exit_code`).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import fields
from typing import Any, Callable

from .config import OUR_LOADERS, PEER_LOADERS, STREAMING_PEERS, RunSpec

__all__ = ["ratios_and_checks", "close_calls", "spec_of", "verdict", "exit_code", "ok_rows"]

Row = dict[str, Any]


def spec_of(row: Row) -> RunSpec:
    """The grid point a result row was measured at."""
    return RunSpec(**{f.name: row[f.name] for f in fields(RunSpec) if f.name in row})


def ok_rows(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.get("status") == "ok"]


def _round_values(row: Row, metric: str) -> dict[int, float]:
    # peak PSS is measured in memory rounds of its own (grid.Session.measure)
    rounds = row.get("memory_rounds", []) if metric == "peak_pss_mb" else row.get("rounds", [])
    return {r["round"]: r[metric] for r in rounds if r.get("status") == "ok" and r.get(metric) is not None}


def verdict(value: float, lo: float, hi: float, target: float, op: str) -> str:
    """PASS / FAIL / inconclusive (NOTE [ Verdicts ])."""
    if op == ">=":
        return "PASS" if lo >= target else ("FAIL" if hi < target else "inconclusive")
    return "PASS" if hi <= target else ("FAIL" if lo > target else "inconclusive")


def exit_code(checks: list[dict[str, Any]]) -> int:
    """0: every check with a target passed; 1: one failed, or a row it needs is missing or errored;
    3: none failed but some are inconclusive."""
    statuses = {c["status"] for c in checks if c.get("target") is not None}
    if statuses & {"FAIL", "missing", "error"}:
        return 1
    return 3 if "inconclusive" in statuses else 0


class _Checks:
    def __init__(self, rows: list[Row], targets: dict[str, float]) -> None:
        self.rows = rows
        self.ok = ok_rows(rows)
        self.targets = targets
        self.out: list[dict[str, Any]] = []
        self.lat = float(targets.get("latency_ms", 50))
        self.workers = int(targets.get("workers", 2))
        # NOTE: every check compares runs at the grid's usual batch size (the most common one), so a
        # batch-size sweep point is never taken for the main result (nor for its reference).
        self.batch_size = Counter(r["batch_size"] for r in rows).most_common(1)[0][0] if rows else None
        fetch = Counter((r["num_fetch_workers"], r["batch_pool"]) for r in rows
                        if r["loader"] in OUR_LOADERS and r.get("format") != "shards")
        clients = Counter(r["s3_client"] for r in rows if r["storage"] == "s3" and r["loader"] not in PEER_LOADERS)
        self.fetch = fetch.most_common(1)[0][0] if fetch else None
        self.client = clients.most_common(1)[0][0] if clients else None

    # -- row selection -----------------------------------------------------------------------
    def main_setting(self, r: Row) -> bool:
        """The grid's usual settings: batch size, fetch settings, S3 client, recipe."""
        if r["batch_size"] != self.batch_size or r.get("transform", "realistic") != "realistic":
            return False
        if r["storage"] == "s3" and r["loader"] not in PEER_LOADERS and self.client and r["s3_client"] != self.client:
            return False
        if r["loader"] in OUR_LOADERS and r.get("format") != "shards" and self.fetch is not None:
            return (r["num_fetch_workers"], r["batch_pool"]) == self.fetch
        return True

    def find(self, pred: Callable[[Row], bool], fmt: str | None = "jpeg", decoder: str = "pil") -> list[Row]:
        """Every row (any status) of the main setting matching ``pred``."""
        return [r for r in self.rows if self.main_setting(r) and pred(r) and (fmt is None or r.get("format") == fmt)
                and r.get("decoder", "pil") == decoder]

    @staticmethod
    def best(rows: list[Row]) -> Row | None:
        good = ok_rows(rows)
        return max(good, key=lambda r: r["img_per_s"]) if good else None

    def ours(self, storage: str = "s3", lat: float | None = None, fmt: str = "jpeg", decoder: str = "pil",
             impl: str | None = None) -> list[Row]:
        lat = self.lat if lat is None else lat
        return self.find(lambda r: r["storage"] == storage and (storage == "scratch" or r["latency_ms"] == lat)
                         and r["loader"] in ((impl,) if impl else OUR_LOADERS) and r["num_workers"] == self.workers,
                         fmt, decoder)

    # -- checks ------------------------------------------------------------------------------
    def add(self, name: str, key: str, a: list[Row], b: list[Row], metric: str = "img_per_s", op: str = ">=",
            b_pick: str = "best") -> None:
        """Compare the best row of ``a`` with the best of ``b`` (``b_pick="all"``: every row of ``b``
        is needed, the best one is the reference)."""
        target = self.targets.get(key)
        name = f"{name}{' [' + metric + ']' if metric != 'img_per_s' else ''}"
        check: dict[str, Any] = {"check": name, "target_key": key, "target": target, "op": op, "value": None,
                                 "lo": None, "hi": None, "status": "missing", "pass": None, "detail": "", "runs": []}
        self.out.append(check)
        if not a or not b:
            check["detail"] = f"no {'row' if not a else 'reference row'} in the grid"
            return
        needed = (a if len(a) == 1 else []) + (b if b_pick == "all" else [])
        for r in needed + [self.best(a) or a[0]] + [self.best(b) or b[0]]:
            status = str(r.get("status", ""))
            if status.startswith("error"):
                check.update(status="error", detail=f"{r['loader']}: {status[:200]}")
                return
            if status != "ok":
                check.update(detail=f"{r['loader']}: {status[:200] or 'not run'}")
                return
        ra, rb = self.best(a), self.best(b)
        assert ra is not None and rb is not None
        va, vb = ra.get(metric), rb.get(metric)
        if va is None or not vb:
            check["detail"] = f"{metric} not measured"
            return
        value = va / vb
        ax, bx = _round_values(ra, metric), _round_values(rb, metric)
        paired = [ax[i] / bx[i] for i in sorted(set(ax) & set(bx)) if bx[i]]
        lo, hi = (min(paired), max(paired)) if paired else (value, value)
        check.update(value=value, lo=lo, hi=hi, runs=[spec_of(ra), spec_of(rb)],
                     detail=f"{_describe(ra, metric)} vs {_describe(rb, metric)}; per-round {lo:.2f}-{hi:.2f}")
        if target is not None:
            check["status"] = verdict(value, lo, hi, target, op)
            check["pass"] = {"PASS": True, "FAIL": False}.get(check["status"])
        else:
            check["status"] = "info"

    def run(self, client_cpu: dict[str, float] | None) -> list[dict[str, Any]]:
        lat, w = self.lat, self.workers
        s3_lat = lambda r: r["storage"] == "s3" and r["latency_ms"] == lat  # noqa: E731
        torch_all = self.find(lambda r: s3_lat(r) and r["loader"] == "torch")
        peers = self.find(lambda r: s3_lat(r) and r["loader"] in PEER_LOADERS, fmt=None)
        streaming = [r for r in peers if r["loader"] in STREAMING_PEERS]
        ours = self.ours()
        t = self.targets
        if "vs_best_torch" in t or "pss_vs_best_torch" in t:
            best_torch = self.best(torch_all)
            ref = [best_torch] if best_torch else torch_all
            self.add(f"ours ({w} workers) / best stock torch, s3 {lat:g} ms", "vs_best_torch", ours, ref)
            self.add(f"ours ({w} workers) / best stock torch, s3 {lat:g} ms", "pss_vs_best_torch", ours, ref,
                     metric="peak_pss_mb", op="<=")
        if "vs_best_streaming_peer" in t:
            self.add(f"ours per-object random access / best shard-streaming peer, s3 {lat:g} ms",
                     "vs_best_streaming_peer", ours, streaming, b_pick="all")
        if "shards_vs_webdataset" in t:
            self.add(f"ours on shards / webdataset, s3 {lat:g} ms", "shards_vs_webdataset",
                     self.ours(fmt="shards"), [r for r in peers if r["loader"] == "webdataset"])
        fast = self.ours(decoder="torchvision")
        if "fast_vs_every_peer" in t:
            self.add(f"ours fast decode / best of every peer and stock torch, s3 {lat:g} ms", "fast_vs_every_peer",
                     fast, peers + torch_all, b_pick="all")
        impl = (self.best(fast) or (fast[0] if fast else {})).get("loader")
        if "fast_decode_speedup" in t:
            self.add(f"ours torchvision decode / PIL recipe, s3 {lat:g} ms, {w} workers", "fast_decode_speedup",
                     fast, self.ours(impl=impl) if impl else [])
        if "fast_decode_cpu" in t:
            self.add(f"ours torchvision decode / PIL recipe, s3 {lat:g} ms, {w} workers", "fast_decode_cpu",
                     fast, self.ours(impl=impl) if impl else [], metric="loader_cpu_ms_per_img", op="<=")
        # latency hiding: for every implementation the grid also runs at 0 ms (at least one is needed)
        hiding = [i for i in OUR_LOADERS if self.ours(impl=i) and self.ours(lat=0.0, impl=i)] or list(OUR_LOADERS[:1])
        for impl_ in OUR_LOADERS:
            mine = self.ours(impl=impl_)
            if mine and "vs_torch_at_latency" in t:
                self.add(f"{impl_} / torch, s3 {lat:g} ms, {w} workers (same workers)", "vs_torch_at_latency", mine,
                         [r for r in torch_all if r["num_workers"] == w])
            if impl_ in hiding and "latency_hiding" in t:
                self.add(f"{impl_} at {lat:g} ms / at 0 ms (latency hiding)", "latency_hiding", mine,
                         self.ours(lat=0.0, impl=impl_))
            scratch = self.ours(storage="scratch", impl=impl_)
            if scratch and "scratch_vs_torch" in t:
                self.add(f"{impl_} / torch, local disk", "scratch_vs_torch", scratch,
                         self.find(lambda r: r["storage"] == "scratch" and r["loader"] == "torch"
                                   and r["num_workers"] == w))
            archive = self.ours(fmt="archive", impl=impl_)
            if archive and "archive_vs_torch_at_latency" in t:
                self.add(f"{impl_} / torch, one S3 archive (ranged GETs) {lat:g} ms, {w} workers",
                         "archive_vs_torch_at_latency", archive,
                         self.find(lambda r: s3_lat(r) and r["loader"] == "torch" and r["num_workers"] == w, "archive"))
        budget = t.get("client_cpu_ms_per_get")
        for name in ("lean-sync", "lean-async"):
            if client_cpu and name in client_cpu:
                v = client_cpu[name]
                status = "info" if budget is None else ("PASS" if v <= budget else "FAIL")
                self.out.append({"check": f"{name} client CPU ms per GET", "target_key": "client_cpu_ms_per_get",
                                 "value": v, "lo": v, "hi": v, "target": budget, "op": "<=", "status": status,
                                 "pass": {"PASS": True, "FAIL": False}.get(status), "runs": [],
                                 "detail": f"botocore {client_cpu.get('botocore', float('nan')):.3f}, aiobotocore "
                                           f"{client_cpu.get('aiobotocore', float('nan')):.3f} ms (one measurement)"})
        return self.out


def _describe(row: Row, metric: str) -> str:
    unit = {"img_per_s": "img/s", "peak_pss_mb": "MB", "loader_cpu_ms_per_img": "ms/img"}.get(metric, "")
    what = f"{row['loader']}{'[' + row['decoder'] + ']' if row.get('decoder', 'pil') != 'pil' else ''}" \
           f"{'/' + row['format'] if row.get('format') not in ('jpeg', 'peer') else ''} nw={row['num_workers']}"
    return f"{what} {row[metric]:.4g} {unit}".rstrip()


def ratios_and_checks(rows: list[Row], targets: dict[str, float] | None = None,
                      client_cpu: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Fill ``ratio_vs_torch`` per row (vs stock torch at the same storage, format, latency, workers,
    batch size and recipe) and evaluate the targets; returns the checks."""
    def ref_key(r: Row) -> tuple:
        return (r["storage"], r.get("format", "jpeg"), r["latency_ms"], r["num_workers"], r["batch_size"],
                r["transform"], r.get("decoder", "pil"))

    ok = ok_rows(rows)
    torch_ref: dict[tuple, Row] = {}
    for r in ok:
        if r["loader"] == "torch":
            torch_ref.setdefault(ref_key(r), r)
    for r in ok:
        key = ref_key(r)
        if r["loader"] in PEER_LOADERS:  # a peer reads its own format: compare with torch on the JPEGs
            key = (r["storage"], "jpeg") + key[2:]
        ref = torch_ref.get(key)
        r["ratio_vs_torch"] = r["img_per_s"] / ref["img_per_s"] if ref else None
    return _Checks(rows, dict(targets or {})).run(client_cpu)


def close_calls(checks: list[dict[str, Any]], margin: float) -> list[dict[str, Any]]:
    """Checks worth more rounds: inconclusive ones, and those within ``margin`` (relative) of the target."""
    out = []
    for c in checks:
        v, t = c.get("value"), c.get("target")
        if not c.get("runs") or v is None or not t:
            continue
        if c.get("status") == "inconclusive" or abs(v - t) <= margin * t:
            out.append(c)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)
