"""A fast, minimal S3-compatible server on 127.0.0.1 with injected latency, for benchmarks.

Why not moto: moto spends ~3.4 ms of CPU per GET and caps near 300 GET/s on two cores, so a
loader that aims at ~400 img/s would measure the server, not itself. This server answers from
memory (or from a directory) with a hand-written HTTP/1.1 parser on uvloop and costs a small
fraction of a millisecond per GET, so the client side is what a benchmark sees.

What it speaks (path-style addressing only, ``http://127.0.0.1:PORT/bucket/key``):
GetObject/HeadObject (with ``Range``), PutObject (plain, ``Transfer-Encoding: chunked`` and
``aws-chunked`` bodies, ``Expect: 100-continue``), DeleteObject, DeleteObjects, CreateBucket,
HeadBucket, DeleteBucket, GetBucketLocation, ListBuckets, ListObjects and ListObjectsV2
(prefix, delimiter, pagination, ``encoding-type=url``), and multipart uploads (create, upload part,
complete, abort: what boto3's ``upload_file`` does for big files). ListParts, versioning, ACLs and
copies answer ``501 NotImplemented``. Signatures are never checked: any credentials work.

Latency model: every S3 request waits ``latency_ms`` plus a uniform jitter in
``[-jitter_ms, +jitter_ms]`` (never below zero) before its response starts, with a
non-blocking timer, so thousands of requests can wait at once. ``bandwidth_mb_s`` optionally
caps the bytes per second the server sends, as one shared link.

Counters (requests, per operation, bytes, in-flight and peak in-flight requests, connections,
server CPU time) are read in-process (:meth:`S3Server.stats`) or over the admin endpoint
``GET /_admin/stats``; ``POST /_admin/reset`` zeroes them and ``PUT /_admin/config`` (JSON
body) changes latency/jitter/bandwidth while running. Bucket names cannot start with ``_``,
so the admin paths never collide with S3 paths.

Fault injection is meant to be added as :class:`RequestHook` objects: ``before`` may answer a
request itself (for example ``503 SlowDown``), ``after`` may replace or alter the response, and
the transport honours the response's ``reset``, ``truncate_to``, ``stall_s``/``stall_after``,
``delay_s`` and ``close`` knobs.

Run it::

    python -m benchmarking.s3_server --port 9000 --latency-ms 50 --jitter-ms 5 --data-dir DIR

or in-process: ``with S3Server(latency_ms=50) as server: server.endpoint_url``.

Layout: :mod:`.http` (HTTP/1.1 transport, requests, responses, hooks), :mod:`.buckets` (in-memory
and directory buckets), :mod:`.s3api` (S3 semantics and errors), :mod:`.server` (lifecycle, latency,
counters, admin), :mod:`.process` (own process and command line).
"""

from .buckets import DirBucket, InvalidKeyError, MemBucket
from .http import Request, RequestHook, Response
from .process import ServerProcess, main
from .s3api import s3_error
from .server import S3Server, ServerConfig

__all__ = ["S3Server", "ServerConfig", "ServerProcess", "Request", "Response", "RequestHook", "s3_error", "main",
           "MemBucket", "DirBucket", "InvalidKeyError"]
