"""Fault injection for the benchmark S3 server (:mod:`benchmarking.s3_server`), for reliability tests.

A :class:`FaultInjector` is a :class:`~benchmarking.s3_server.RequestHook`: it decides, for each
object request, whether to break it and how. Faults are chosen three ways, first match wins:

* by request number (``at_request(seq, kind)``: the server-wide 1-based ``Request.seq``);
* by key (``on_key(key, kind, times=None)``: every request for the key, or only its first
  ``times`` requests, so a transient fault can be aimed at one sample);
* by probability (``rate`` with ``kinds``): each request is drawn independently. The draw for
  the *n*-th request of a key depends only on ``(seed, key, n)``, not on arrival order, so a
  seed reproduces the same faults however the client's concurrency interleaves requests.

Fault kinds (:data:`FAULT_KINDS`):

=================  =====================================================================
``slowdown``       ``503 SlowDown`` (throttling)
``internal_error`` ``500 InternalError``
``reset``          TCP RST mid-body: half the body is sent, then the connection is aborted
``truncate``       the full ``Content-Length`` header, half the body, then the connection closes
``stall``          half the body, then a pause of ``stall_s`` (longer than the client's read timeout)
``corrupt``        every byte of the body flipped (same length, the ETag still describes the original)
``bad_etag``       the right body with a wrong ``ETag`` header
``missing``        ``404 NoSuchKey``
``access_denied``  ``403 AccessDenied``
=================  =====================================================================

``reset`` needs the server (:meth:`FaultInjector.bind`, done by :func:`fault_server`) to reach
the connection; unbound, it aborts before the first byte instead. Only object GETs are faulted
(``ops``), so HEAD/LIST/PUT used to arrange a test go through.

Counters (:meth:`FaultInjector.counts`): requests seen, faults injected per kind, and per key.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
from collections import Counter
from typing import Iterable, Iterator, Mapping

from .s3_server import Request, RequestHook, Response, S3Server, s3_error

__all__ = ["FAULT_KINDS", "TRANSIENT_KINDS", "PERMANENT_KINDS", "FaultInjector", "fault_server"]

FAULT_KINDS = ("slowdown", "internal_error", "reset", "truncate", "stall", "corrupt", "bad_etag", "missing",
               "access_denied")
# What a client should retry (with read_timeout < stall_s, a stall is a timeout).
TRANSIENT_KINDS = ("slowdown", "internal_error", "reset", "truncate", "stall")
PERMANENT_KINDS = ("missing", "access_denied")
_FLIP = bytes(255 - i for i in range(256))


class FaultInjector(RequestHook):
    """Breaks chosen object requests; see the module docstring.

    rate, kinds
        Probability that a request is faulted, and the kinds drawn from (uniformly, or by
        weight when ``kinds`` is a mapping ``{kind: weight}``).
    seed
        Makes the probabilistic draws reproducible (per key and request number of that key).
    stall_s
        How long a ``stall`` pauses mid-body.
    max_consecutive
        At most this many probabilistic faults in a row for one key (``None``: no cap). With a
        cap below the client's retry attempts, every key is eventually served, whatever the seed.
    ops
        Which requests may be faulted: ``"GET"`` and/or ``"HEAD"`` on objects.
    """

    def __init__(self, rate: float = 0.0, kinds: Iterable[str] | Mapping[str, float] = TRANSIENT_KINDS, *,
                 seed: int = 0, stall_s: float = 5.0, max_consecutive: int | None = 2,
                 ops: Iterable[str] = ("GET",)) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        weights = dict(kinds) if isinstance(kinds, Mapping) else {k: 1.0 for k in kinds}
        for kind in weights:
            _check_kind(kind)
        if rate > 0 and not weights:
            raise ValueError("rate > 0 needs at least one fault kind")
        self.rate = rate
        self._kinds = list(weights)
        self._weights = [float(weights[k]) for k in self._kinds]
        self.seed = seed
        self.stall_s = stall_s
        self.max_consecutive = max_consecutive
        self.ops = frozenset(o.upper() for o in ops)
        self.enabled = True
        self._server: S3Server | None = None
        self._by_seq: dict[int, str] = {}
        self._by_key: dict[str, list] = {}  # key -> [kind, remaining or None]
        # NOTE: hooks run on the server's event-loop thread; tests read the counters from theirs.
        self._lock = threading.Lock()
        self._seen_per_key: Counter[str] = Counter()
        self._streak: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._injected_keys: Counter[str] = Counter()
        self._requests = 0
        self._pending: dict[int, str] = {}  # request seq -> fault applied in after()

    # -- configuration ------------------------------------------------------------------------------
    def bind(self, server: S3Server) -> "FaultInjector":
        """Let ``reset`` reach the server's connection (so it can abort mid-body)."""
        self._server = server
        return self

    def at_request(self, seq: int, kind: str) -> "FaultInjector":
        """Fault the server's ``seq``-th request (1-based, counting every request it parsed)."""
        _check_kind(kind)
        with self._lock:
            self._by_seq[int(seq)] = kind
        return self

    def on_key(self, key: str, kind: str, times: int | None = None) -> "FaultInjector":
        """Fault requests for ``key`` (the object key without the bucket): all of them (``times=None``,
        a permanent fault) or the next ``times`` ones (a transient fault)."""
        _check_kind(kind)
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times}")
        with self._lock:
            self._by_key[key] = [kind, times]
        return self

    def set_rate(self, rate: float, kinds: Iterable[str] | Mapping[str, float] | None = None,
                 seed: int | None = None) -> "FaultInjector":
        """Change the probabilistic faults (and their seed) while the server runs."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        with self._lock:
            if kinds is not None:
                weights = dict(kinds) if isinstance(kinds, Mapping) else {k: 1.0 for k in kinds}
                for kind in weights:
                    _check_kind(kind)
                self._kinds = list(weights)
                self._weights = [float(weights[k]) for k in self._kinds]
            if seed is not None:
                self.seed = seed
            self.rate = rate
        return self

    def clear(self) -> None:
        """Forget per-request and per-key rules (the probabilistic rate stays)."""
        with self._lock:
            self._by_seq.clear()
            self._by_key.clear()

    def counts(self) -> dict:
        """``{"requests", "injected", "by_kind", "by_key", "requests_by_key"}``: object requests seen,
        faults injected (in total, per kind, per key) and requests per key (all time)."""
        with self._lock:
            return {"requests": self._requests, "injected": sum(self._injected.values()),
                    "by_kind": dict(self._injected), "by_key": dict(self._injected_keys),
                    "requests_by_key": {k.split("/", 1)[1]: n for k, n in self._seen_per_key.items()}}

    def reset_counts(self) -> None:
        with self._lock:
            self._requests = 0
            self._injected.clear()
            self._injected_keys.clear()

    # -- choosing -------------------------------------------------------------------------------
    def _eligible(self, request: Request) -> bool:
        return (self.enabled and request.key is not None and request.method in self.ops
                and not request.params.keys() - {"x-id"})

    def _choose(self, request: Request) -> str | None:
        key = f"{request.bucket}/{request.key}"
        with self._lock:
            self._requests += 1
            n = self._seen_per_key[key]
            self._seen_per_key[key] = n + 1
            kind = self._by_seq.pop(request.seq, None)
            if kind is None:
                rule = self._by_key.get(request.key) or self._by_key.get(key)
                if rule is not None:
                    kind = rule[0]
                    if rule[1] is not None:
                        rule[1] -= 1
                        if rule[1] <= 0:
                            self._by_key.pop(request.key, None) or self._by_key.pop(key, None)
            if kind is None and self.rate > 0:
                capped = self.max_consecutive is not None and self._streak[key] >= self.max_consecutive
                rng = random.Random(_draw_seed(self.seed, key, n))
                if not capped and rng.random() < self.rate:
                    kind = rng.choices(self._kinds, self._weights)[0]
                    self._streak[key] += 1
                else:
                    self._streak[key] = 0
            if kind is not None:
                self._injected[kind] += 1
                self._injected_keys[request.key] += 1
            return kind

    # -- the hook -------------------------------------------------------------------------------
    def before(self, request: Request) -> Response | None:
        if not self._eligible(request):
            return None
        kind = self._choose(request)
        if kind is None:
            return None
        head = request.method == "HEAD"
        if kind == "slowdown":
            return s3_error(503, "SlowDown", "Please reduce your request rate.", request.path, head)
        if kind == "internal_error":
            return s3_error(500, "InternalError", "We encountered an internal error. Please try again.",
                            request.path, head)
        if kind == "missing":
            return s3_error(404, "NoSuchKey", "The specified key does not exist.", request.path, head,
                            [("Key", request.key or "")])
        if kind == "access_denied":
            return s3_error(403, "AccessDenied", "Access Denied", request.path, head)
        with self._lock:  # a fault on the real response: after() applies it
            self._pending[request.seq] = kind
        return None

    def after(self, request: Request, response: Response) -> Response | None:
        with self._lock:
            kind = self._pending.pop(request.seq, None)
        if kind is None:
            return None
        if response.status not in (200, 206) or request.method == "HEAD":
            return None  # nothing to break (e.g. the object does not exist)
        body = response.body
        half = len(body) // 2
        if kind == "truncate":
            response.truncate_to = half
        elif kind == "stall":
            response.stall_after = half
            response.stall_s = self.stall_s
        elif kind == "reset":
            self._reset_mid_body(request, response, half)
        elif kind == "corrupt":
            response.body = bytes(body).translate(_FLIP)
        elif kind == "bad_etag":
            wrong = '"' + hashlib.md5(b"not-" + bytes(body), usedforsecurity=False).hexdigest() + '"'
            response.headers = [(k, wrong if k.lower() == "etag" else v) for k, v in response.headers]
        return None

    def _reset_mid_body(self, request: Request, response: Response, half: int) -> None:
        server = self._server
        loop = getattr(server, "_loop", None)
        # NOTE: reaches into the server's connection table (read-only) because the transport
        # has no "reset after N bytes" knob: send half the body, pause, and abort the socket
        # during the pause. Unbound, fall back to an RST before the first byte.
        conn = next((c for c in getattr(server, "_conns", ()) if c.id == request.conn_id), None)
        if loop is None or conn is None:
            response.reset = True
            return
        response.stall_after = half
        response.stall_s = 0.2
        loop.call_later(0.02, conn._reset)

    def __repr__(self) -> str:
        return (f"FaultInjector(rate={self.rate}, kinds={self._kinds}, seed={self.seed}, "
                f"injected={self.counts()['injected']})")


def _check_kind(kind: str) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")


def _draw_seed(seed: int, key: str, n: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{key}\x00{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@contextlib.contextmanager
def fault_server(injector: FaultInjector | None = None, **server_options: object) -> Iterator[S3Server]:
    """An in-process :class:`S3Server` with ``injector`` installed (and bound); stopped on exit."""
    hooks = list(server_options.pop("hooks", ()))  # type: ignore[call-overload]
    if injector is not None:
        hooks.insert(0, injector)
    server = S3Server(hooks=hooks, **server_options)  # type: ignore[arg-type]
    if injector is not None:
        injector.bind(server)
    server.start()
    try:
        yield server
    finally:
        server.stop()
