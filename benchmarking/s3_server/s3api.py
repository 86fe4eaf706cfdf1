"""S3 semantics of the benchmark server: object and bucket operations, listings, ranges, multipart
uploads, S3 XML errors. :class:`S3Api` is mixed into :class:`~.server.S3Server`; it needs only
``self._buckets`` and ``self.region``, and answers one parsed request at a time (no latency, no hooks)."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from bisect import bisect_left
from typing import Iterable
from urllib.parse import quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from .buckets import Bucket, DirBucket, MemBucket, _iso_date
from .http import Request, Response, _decode_chunked

__all__ = ["S3Api", "s3_error"]

_MULTIPART_PARAMS = ("uploads", "uploadId", "partNumber")
_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def s3_error(status: int, code: str, message: str, resource: str = "", head: bool = False,
             extra: Iterable[tuple[str, str]] = ()) -> Response:
    """An S3 XML error response (no body for HEAD, as S3 does)."""
    body = b""
    if not head:
        parts = [_XML_DECL, "<Error><Code>", code, "</Code><Message>", escape(message), "</Message>"]
        if resource:
            parts += ["<Resource>", escape(resource), "</Resource>"]
        for k, v in extra:
            parts += [f"<{k}>", escape(v), f"</{k}>"]
        parts.append("</Error>")
        body = "".join(parts).encode()
    return Response(status, [("Content-Type", "application/xml")], body, op="Error")




def _request_body(req: Request) -> bytes | Response:
    """The bytes a PUT carries: plain, or decoded from ``aws-chunked`` (checked against its length)."""
    body = req.body
    if "aws-chunked" in req.headers.get("content-encoding", "") or \
            req.headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
        body = _decode_aws_chunked(body)
        expected = req.headers.get("x-amz-decoded-content-length")
        if expected is not None and int(expected) != len(body):
            return s3_error(400, "IncompleteBody", f"decoded {len(body)} bytes, header says {expected}", req.path)
    return body


def _decode_aws_chunked(body: bytes) -> bytes:
    """The ``aws-chunked`` content encoding (SigV4 streaming uploads): same framing as HTTP
    chunked, with ``;chunk-signature=...`` extensions and optional trailers (checksums)."""
    decoded = _decode_chunked(body + (b"" if body.endswith(b"\r\n\r\n") else b"\r\n"), 0)
    if decoded is None:
        raise ValueError("truncated aws-chunked body")
    return decoded[0]



class S3Api:
    """S3 request handling over ``self._buckets`` (name -> bucket)."""

    _buckets: dict[str, Bucket]
    _uploads: dict[str, tuple[Bucket, str, dict[int, bytes]]]  # upload id -> (bucket, key, parts)
    region: str

    def handle(self, req: Request) -> Response:
        """Answer one S3 request (no latency, no hooks)."""
        m = req.method
        head = m == "HEAD"
        if req.bucket is None:
            if m == "GET":
                return self._list_buckets()
            return s3_error(405, "MethodNotAllowed", f"{m} / is not supported", "/", head)
        bucket = self._buckets.get(req.bucket)
        if req.key is None:
            return self._bucket_op(req, bucket)
        if bucket is None:
            return s3_error(404, "NoSuchBucket", "The specified bucket does not exist", req.path, head,
                            [("BucketName", req.bucket)])
        params = req.params if req.query else {}
        for p in params:
            if p == "x-id" or p.startswith(("response-", "X-Amz-", "x-amz-")) or p in _MULTIPART_PARAMS:
                continue
            return s3_error(501, "NotImplemented", f"object subresource {p!r} is not implemented by this server",
                            req.path, head)
        if "uploads" in params or "uploadId" in params:
            return self._multipart(req, bucket, params)
        if m == "GET" or head:
            return self._get_object(req, bucket, head)
        if m == "PUT":
            if "x-amz-copy-source" in req.headers:
                return s3_error(501, "NotImplemented", "CopyObject is not implemented by this server", req.path)
            body = _request_body(req)
            if isinstance(body, Response):
                return body
            meta = bucket.put(req.key, body)
            return Response(200, [("ETag", meta.etag)], op="PutObject")
        if m == "DELETE":
            bucket.delete(req.key)
            return Response(204, op="DeleteObject")
        return s3_error(405, "MethodNotAllowed", f"{m} is not allowed on objects", req.path)

    # -- multipart uploads (what boto3's upload_file does above 8 MB) ---------------------------
    def _multipart(self, req: Request, bucket: Bucket, params: dict[str, str]) -> Response:
        """CreateMultipartUpload, UploadPart, CompleteMultipartUpload, AbortMultipartUpload.

        Parts are held in memory until completion; the object is then stored with one ``put``
        (atomic for a directory bucket). ListParts and UploadPartCopy are not implemented.
        """
        uploads = self._uploads
        m, key = req.method, req.key
        assert key is not None
        if "uploads" in params and m == "POST":
            upload_id = uuid.uuid4().hex
            uploads[upload_id] = (bucket, key, {})
            body = (f'{_XML_DECL}<InitiateMultipartUploadResult xmlns="{_S3_NS}"><Bucket>{escape(bucket.name)}'
                    f"</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>")
            return Response(200, [("Content-Type", "application/xml")], body.encode(), op="CreateMultipartUpload")
        upload = uploads.get(params.get("uploadId", ""))
        if upload is None or upload[0] is not bucket or upload[1] != key:
            return s3_error(404, "NoSuchUpload", "The specified upload does not exist.", req.path, m == "HEAD")
        parts: dict[int, bytes] = upload[2]
        if m == "PUT" and "partNumber" in params:
            try:
                number = int(params["partNumber"])
            except ValueError:
                number = 0
            if not 1 <= number <= 10000:
                return s3_error(400, "InvalidArgument", "Part number must be an integer between 1 and 10000",
                                req.path)
            data = _request_body(req)
            if isinstance(data, Response):
                return data
            parts[number] = data
            etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
            return Response(200, [("ETag", etag)], op="UploadPart")
        if m == "POST":
            try:
                root = ElementTree.fromstring(req.body)
            except ElementTree.ParseError as exc:
                return s3_error(400, "MalformedXML", f"CompleteMultipartUpload body is not valid XML: {exc}")
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            numbers = [int(p.findtext(f"{ns}PartNumber") or 0) for p in root.iter(f"{ns}Part")]
            if not numbers or numbers != sorted(numbers) or any(n not in parts for n in numbers):
                return s3_error(400, "InvalidPart", "One or more of the specified parts could not be found, or "
                                "the list is not in ascending order.", req.path)
            meta = bucket.put(key, b"".join(parts[n] for n in numbers))
            del uploads[params["uploadId"]]
            body = (f'{_XML_DECL}<CompleteMultipartUploadResult xmlns="{_S3_NS}"><Location>/{escape(bucket.name)}/'
                    f"{escape(key)}</Location><Bucket>{escape(bucket.name)}</Bucket><Key>{escape(key)}</Key>"
                    f"<ETag>{escape(meta.etag)}</ETag></CompleteMultipartUploadResult>")
            return Response(200, [("Content-Type", "application/xml")], body.encode(), op="CompleteMultipartUpload")
        if m == "DELETE":
            del uploads[params["uploadId"]]
            return Response(204, op="AbortMultipartUpload")
        return s3_error(501, "NotImplemented", f"{m} with uploadId is not implemented by this server", req.path)

    def _get_object(self, req: Request, bucket: MemBucket | DirBucket, head: bool) -> Response:
        key = req.key
        assert key is not None
        if head:
            meta = bucket.head(key)
            data = b""
        else:
            obj = bucket.get(key)
            meta = obj[1] if obj is not None else None
            data = obj[0] if obj is not None else b""
        op = "HeadObject" if head else "GetObject"
        if meta is None:
            resp = s3_error(404, "NoSuchKey", "The specified key does not exist.", req.path, head, [("Key", key)])
            resp.op = op
            return resp
        size = meta.size
        headers = [("Content-Type", "application/octet-stream"), ("ETag", meta.etag),
                   ("Last-Modified", meta.last_modified), ("Accept-Ranges", "bytes")]
        rng = req.headers.get("range")
        status = 200
        if rng is not None:
            parsed = _parse_range(rng, size)
            if parsed == "invalid":
                resp = s3_error(416, "InvalidRange", "The requested range is not satisfiable", req.path, head,
                                [("RangeRequested", rng), ("ActualObjectSize", str(size))])
                resp.headers.append(("Content-Range", f"bytes */{size}"))
                resp.op = op
                return resp
            if parsed is not None:
                start, end = parsed
                status = 206
                headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
                if not head:
                    data = memoryview(data)[start:end + 1] if (start or end + 1 != size) else data
                size = end - start + 1
        if head:
            return Response(status, headers, b"", content_length=size, op=op)
        return Response(status, headers, data, op=op)

    def _bucket_op(self, req: Request, bucket: MemBucket | DirBucket | None) -> Response:
        m = req.method
        head = m == "HEAD"
        name = req.bucket
        assert name is not None
        params = req.params
        if m == "PUT" and not params:
            if bucket is not None:
                return s3_error(409, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket "
                                "succeeded and you already own it.", f"/{name}", extra=[("BucketName", name)])
            if not _BUCKET_RE.match(name) or ".." in name:
                return s3_error(400, "InvalidBucketName", "The specified bucket is not valid.", f"/{name}",
                                extra=[("BucketName", name)])
            self._buckets[name] = MemBucket(name)
            return Response(200, [("Location", f"/{name}")], op="CreateBucket")
        if bucket is None:
            return s3_error(404, "NoSuchBucket", "The specified bucket does not exist", f"/{name}", head,
                            [("BucketName", name)])
        if head:
            return Response(200, [("x-amz-bucket-region", self.region)], op="HeadBucket")
        if m == "GET":
            if "location" in params:
                body = f'{_XML_DECL}<LocationConstraint xmlns="{_S3_NS}">' + \
                    ("" if self.region == "us-east-1" else self.region) + "</LocationConstraint>"
                return Response(200, [("Content-Type", "application/xml")], body.encode(), op="GetBucketLocation")
            unsupported = set(params) - {"list-type", "prefix", "delimiter", "max-keys", "continuation-token",
                                         "start-after", "encoding-type", "fetch-owner", "marker", "x-id"}
            if unsupported:
                return s3_error(501, "NotImplemented", f"bucket subresource {sorted(unsupported)[0]!r} is not "
                                "implemented by this server", f"/{name}")
            return self._list_objects(bucket, params, v2=params.get("list-type") == "2")
        if m == "DELETE" and not params:
            if len(bucket):
                return s3_error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty", f"/{name}",
                                extra=[("BucketName", name)])
            del self._buckets[name]
            return Response(204, op="DeleteBucket")
        if m == "POST" and "delete" in params:
            return self._delete_objects(bucket, req.body)
        return s3_error(501, "NotImplemented", f"{m} /{name}?{req.query} is not implemented by this server", f"/{name}")

    def _delete_objects(self, bucket: MemBucket | DirBucket, body: bytes) -> Response:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            return s3_error(400, "MalformedXML", f"DeleteObjects body is not valid XML: {exc}")
        ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        quiet = (root.findtext(f"{ns}Quiet") or "").lower() == "true"
        parts = [_XML_DECL, f'<DeleteResult xmlns="{_S3_NS}">']
        for obj in root.iter(f"{ns}Object"):
            key = obj.findtext(f"{ns}Key")
            if key is None:
                continue
            bucket.delete(key)
            if not quiet:
                parts.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
        parts.append("</DeleteResult>")
        return Response(200, [("Content-Type", "application/xml")], "".join(parts).encode(), op="DeleteObjects")

    def _list_buckets(self) -> Response:
        parts = [_XML_DECL, f'<ListAllMyBucketsResult xmlns="{_S3_NS}"><Owner><ID>bench</ID>'
                 "<DisplayName>bench</DisplayName></Owner><Buckets>"]
        for name in sorted(self._buckets):
            parts.append(f"<Bucket><Name>{escape(name)}</Name><CreationDate>{_iso_date(self._buckets[name].created)}"
                         "</CreationDate></Bucket>")
        parts.append("</Buckets></ListAllMyBucketsResult>")
        return Response(200, [("Content-Type", "application/xml")], "".join(parts).encode(), op="ListBuckets")

    def _list_objects(self, bucket: MemBucket | DirBucket, params: dict[str, str], v2: bool) -> Response:
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        try:
            max_keys = max(0, min(1000, int(params.get("max-keys", "1000"))))
        except ValueError:
            return s3_error(400, "InvalidArgument", f"max-keys must be an integer, got {params.get('max-keys')!r}")
        url = params.get("encoding-type") == "url"
        enc = (lambda s: quote(s, safe="/")) if url else (lambda s: s)
        if v2:
            token = params.get("continuation-token")
            if token:
                try:
                    start_key = base64.urlsafe_b64decode(token.encode()).decode()
                except (ValueError, UnicodeDecodeError):
                    return s3_error(400, "InvalidArgument", "The continuation token provided is incorrect")
                after = None
            else:
                start_key = None
                after = params.get("start-after") or None
        else:
            start_key = None
            after = params.get("marker") or None
        keys = bucket.keys()
        lo = prefix
        if start_key is not None and start_key > lo:
            lo = start_key
        i = bisect_left(keys, lo)
        if after is not None:
            j = bisect_left(keys, after)
            if j < len(keys) and keys[j] == after:
                j += 1
            i = max(i, j)
        contents: list[str] = []
        prefixes: list[str] = []
        truncated = False
        next_key = None
        last_emitted = None
        n = 0
        while i < len(keys):
            k = keys[i]
            if not k.startswith(prefix):
                break
            if n >= max_keys:
                truncated = True
                next_key = k
                break
            if delimiter:
                d = k.find(delimiter, len(prefix))
                if d >= 0:
                    cp = k[:d + len(delimiter)]
                    prefixes.append(cp)
                    n += 1
                    last_emitted = cp
                    # skip every key under this common prefix
                    i = bisect_left(keys, cp + "\U0010ffff", i)
                    while i < len(keys) and keys[i].startswith(cp):
                        i += 1
                    continue
            entry = bucket.head(k) if isinstance(bucket, DirBucket) else bucket.objects[k][1]
            if entry is not None:
                contents.append(f"<Contents><Key>{escape(enc(k))}</Key><LastModified>{_iso_date(entry.mtime)}"
                                f"</LastModified><ETag>{escape(entry.etag)}</ETag><Size>{entry.size}</Size>"
                                "<StorageClass>STANDARD</StorageClass></Contents>")
                n += 1
                last_emitted = k
            i += 1
        parts = [_XML_DECL, f'<ListBucketResult xmlns="{_S3_NS}"><Name>{escape(bucket.name)}</Name>'
                 f"<Prefix>{escape(enc(prefix))}</Prefix><MaxKeys>{max_keys}</MaxKeys>"
                 f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if delimiter:
            parts.append(f"<Delimiter>{escape(enc(delimiter))}</Delimiter>")
        if url:
            parts.append("<EncodingType>url</EncodingType>")
        if v2:
            parts.append(f"<KeyCount>{n}</KeyCount>")
            if params.get("continuation-token"):
                parts.append(f"<ContinuationToken>{escape(params['continuation-token'])}</ContinuationToken>")
            if params.get("start-after"):
                parts.append(f"<StartAfter>{escape(enc(params['start-after']))}</StartAfter>")
            if truncated and next_key is not None:
                token = base64.urlsafe_b64encode(next_key.encode()).decode()
                parts.append(f"<NextContinuationToken>{token}</NextContinuationToken>")
        else:
            parts.append(f"<Marker>{escape(enc(params.get('marker', '')))}</Marker>")
            if truncated and last_emitted is not None:
                parts.append(f"<NextMarker>{escape(enc(last_emitted))}</NextMarker>")
        parts.extend(contents)
        for cp in prefixes:
            parts.append(f"<CommonPrefixes><Prefix>{escape(enc(cp))}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        return Response(200, [("Content-Type", "application/xml")], "".join(parts).encode(),
                        op="ListObjectsV2" if v2 else "ListObjects")



def _parse_range(value: str, size: int) -> tuple[int, int] | None | str:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); None = ignore the
    header (serve the whole object, as S3 does for multi-range or malformed values);
    ``"invalid"`` = 416."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return "invalid"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or end < start:
        return None
    if start >= size:
        return "invalid"
    return start, min(end, size - 1)


