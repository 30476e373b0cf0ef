"""moto_server for the tests, made as strict as AWS where purgewatch depends on it.

Run as `python tests/moto_atomic.py -H HOST -p PORT` (the arguments of moto_server).

1. Atomic conditional writes. Real S3 checks If-Match / If-None-Match and writes as one step.
   moto 5.2 checks in its response layer and writes later without a lock, so under load two
   PutObjects with the same If-Match can both succeed (seen in the fleet-race test: 11 grants for a
   quota of 10). PutObject is serialised here.

2. A strict layer (a WSGI middleware around moto's DomainDispatcherApplication). Every switch is
   per resource (per bucket, per distribution id), so concurrent tests sharing one emulator do not
   disturb each other. A test sets them through a control endpoint on the same port:

     POST /_strict  {"bucket": "NAME", ...options}  or  {"distribution": "ID", ...options}
         merges the options for that resource; answers the resulting options as JSON.
         Counters (expired_token, conflict, throttle, lose_answer) mean "the next N requests".
     GET  /_strict?bucket=NAME  (or ?distribution=ID)        the options in force
     GET  /_strict/calls?bucket=NAME  (or ?distribution=ID)  {operation: count} of requests seen
         for that resource, refused ones included; HeadObject also per key, as "HeadObject KEY".

   S3 bucket options (requests are path-style `/{bucket}/{key}`):
   - kms (false): the bucket is SSE-KMS. AWS: the ETag of an SSE-KMS object is not the MD5 of its
     body. Every ETag shown (headers, ListObjects / CopyObject XML) becomes 32 hex digits =
     md5("kms:" + moto's etag), with `x-amz-server-side-encryption: aws:kms` on PUT/HEAD/GET/Copy.
     If-Match / If-None-Match (and the copy-source variants) are translated back to moto's ETag;
     a value the bucket never showed (e.g. the body's MD5) matches nothing, as in S3.
   - checksums (true): AWS stores a full-object checksum for every new upload: the algorithm the
     uploader asked for (x-amz-checksum-algorithm, x-amz-sdk-checksum-algorithm, an
     x-amz-checksum-<algo> header, or the one named in x-amz-trailer), else CRC64NVME. It is
     computed here over the bytes moto stored (never the client's value). HeadObject / GetObject
     with `x-amz-checksum-mode: ENABLED` answer `x-amz-checksum-<algo>` and
     `x-amz-checksum-type: FULL_OBJECT`; without checksum mode (or for a Range / partNumber GET)
     no checksum header. false = objects uploaded before 2025: never a checksum header.
     (moto itself only echoes what boto3 sent, and falls back to CRC32 without awscrt.)
   - region (the region moto holds for the bucket, normally "us-east-1"): every S3 answer for the
     bucket carries `x-amz-bucket-region`. A request signed (SigV4 credential scope) for another
     region gets 301 PermanentRedirect, with an XML body except for HEAD; the AWS SDKs do not
     follow it.
   - expired_token (0): the next N requests answer 400 ExpiredToken.
   - conflict (0): the next N conditional PutObjects (If-Match / If-None-Match) answer 409
     ConditionalRequestConflict without writing (S3 does under concurrent conditional writes).
   - access_denied ([]): these operation names answer 403 AccessDenied (HEAD: no body, as S3).
   - list_ms (0): each ListObjectsV2 answers after this long (S3 takes about 100 ms a page).
   - s3_list (false): ListObjectsV2 (prefix, start-after, max-keys, no delimiter) is answered from
     a sorted index of the bucket's keys, as S3 answers a page whatever the bucket's size; moto
     sorts every key of the bucket for each page (about 0.5 s a page at 200,000 keys). The
     index is rebuilt after a write to the bucket through this layer.
     Calls also counts "ListObjectsV2 in flight" (the most at once) for the bucket.

   CloudFront distribution options (`/2020-05-31/distribution/{Id}/invalidation[/{InvId}]`):
   - caller_reference (true): AWS: CreateInvalidation with a CallerReference already used on the
     distribution and the same batch (same paths) returns the existing invalidation (201, the
     first answer again, nothing created); another batch -> 409 InvalidationBatchAlreadyExists.
     (moto creates a new invalidation every time.)
   - validate_paths (true): AWS refuses (400 InvalidArgument) a path that does not start with '/',
     has '*' anywhere but last, is over 4,000 characters, or holds a character that must be
     percent-encoded (non-ASCII, control/space, RFC 1738 unsafe " # < > \\ ^ ` { | } [ ], a '%' not
     followed by two hex digits; '~' is accepted). Quantity != number of paths -> 400
     InconsistentQuantities. More than 3,000 paths in one batch -> 400 BatchTooLarge (AWS
     documents the error, not its exact trigger).
   - in_progress_secs (0): invalidations stay InProgress that long, then Completed (AWS's words;
     moto says COMPLETED at once, kept when 0). A create that would bring the distribution past
     15 wildcard paths or 3,000 file paths in progress (its own batch included, so a batch of 16
     wildcards is refused even at 0) -> 400 TooManyInvalidationsInProgress.
     ListInvalidations lists newest first, as AWS (when the answer is one page).
   - throttle (0): the next N CreateInvalidation answer 400 Throttling "Rate exceeded".
   - expired_token (0): the next N requests for the distribution answer 403 ExpiredToken.
   - lose_answer (0): the next N CreateInvalidation are carried out (with the caller-reference
     bookkeeping) but the client gets 503 ServiceUnavailable: an answer lost on the way back.
   CloudFront errors use CloudFront's XML (<ErrorResponse><Error><Type/><Code/><Message/>), which
   the AWS SDKs parse (moto's own CloudFront errors do not parse in the Rust SDK).

   S3 bucket notifications: AWS keeps an `EventBridgeConfiguration` put with the others and
   answers it back (dropping it turns EventBridge off); moto 5.2 forgets it. Kept here, per bucket.

   Lambda: GetFunction's `Code.Location` is a presigned HTTPS URL to the code's zip, valid about
   10 minutes. moto's points at a host that does not resolve here; it becomes
   http://<this host>/_lambda_code/<region>/<name>?X-Amz-Signature=…, served (unsigned, as a
   presigned URL) with the zip moto holds.

   CloudFront edge: a caching viewer edge (GET/HEAD /_edge/<dist><path>, control
   /_strict/edge/<dist>) lives in tests/moto_edge.py; see its docstring.

   Requests to the middleware itself are not signed; requests the layer does not recognise pass
   to moto untouched.
"""

import base64
import bisect
import hashlib
import io
import json
import re
import sys
import threading
import time
import uuid
import zlib
from urllib.parse import parse_qs, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from moto.s3.responses import S3Response

import moto_edge  # tests/ is sys.path[0] when this file is run

# --- 1. atomic PutObject, and the per-object checksum algorithm -------------------------------

_lock = threading.Lock()
_put_object = S3Response.put_object


def _requested_algorithm(headers):
    """The checksum algorithm the uploader asked for, or CRC64NVME (S3's default)."""
    for name in ("x-amz-checksum-algorithm", "x-amz-sdk-checksum-algorithm"):
        v = headers.get(name)
        if v and v.upper() in ALGORITHMS:
            return v.upper()
    for name in headers.keys():
        n = name.lower()
        if n.startswith("x-amz-checksum-"):
            algo = n[len("x-amz-checksum-"):].upper()
            if algo in ALGORITHMS:
                return algo
    trailer = (headers.get("x-amz-trailer") or "").strip().lower()
    if trailer.startswith("x-amz-checksum-"):
        algo = trailer[len("x-amz-checksum-"):].upper()
        if algo in ALGORITHMS:
            return algo
    return "CRC64NVME"


def put_object(self, *args, **kwargs):
    with _lock:
        result = _put_object(self, *args, **kwargs)
        try:
            status = result[0]
            if 200 <= int(status) < 300:
                key_name = self.parse_key_name()
                key = self.backend.get_object(self.bucket_name, key_name)
                if key is not None:
                    STATE.note_upload(
                        self.bucket_name, key_name, key.etag.strip('"'),
                        _requested_algorithm(self.headers))
        except Exception as e:  # the bookkeeping must never break a write
            print(f"strict: cannot note the upload's checksum: {e!r}", file=sys.stderr)
        return result


S3Response.put_object = put_object

# --- checksums, as S3 computes them ----------------------------------------------------------


def _crc_table(poly, width):
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc_table(0x82F63B78, 32)
_CRC64NVME_TABLE = _crc_table(0x9A6C9329AC4BC9B5, 64)


def crc32c(data: bytes) -> int:
    c, t = 0xFFFFFFFF, _CRC32C_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def crc64nvme(data: bytes) -> int:
    c, t = 0xFFFFFFFFFFFFFFFF, _CRC64NVME_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFFFFFFFFF


ALGORITHMS = {
    "CRC32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
    "CRC32C": lambda d: crc32c(d).to_bytes(4, "big"),
    "CRC64NVME": lambda d: crc64nvme(d).to_bytes(8, "big"),
    "SHA1": lambda d: hashlib.sha1(d).digest(),
    "SHA256": lambda d: hashlib.sha256(d).digest(),
}

assert crc64nvme(b"123456789") == 0xAE8B14860A799888
assert crc32c(b"123456789") == 0xE3069283


def checksum_b64(algo: str, data: bytes) -> str:
    return base64.b64encode(ALGORITHMS[algo](data)).decode()


# --- per-resource state ----------------------------------------------------------------------

BUCKET_DEFAULTS = {
    "kms": False,
    "checksums": True,
    "region": None,  # None: the region moto holds for the bucket
    "expired_token": 0,
    "conflict": 0,
    "access_denied": [],
    "list_ms": 0.0,
    "s3_list": False,
}
DISTRIBUTION_DEFAULTS = {
    "caller_reference": True,
    "validate_paths": True,
    "in_progress_secs": 0.0,
    "throttle": 0,
    "expired_token": 0,
    "lose_answer": 0,
}
_TYPES = {
    "kms": bool, "checksums": bool, "region": str, "expired_token": int, "conflict": int,
    "access_denied": list, "list_ms": (int, float), "s3_list": bool, "caller_reference": bool, "validate_paths": bool,
    "in_progress_secs": (int, float), "throttle": int, "lose_answer": int,
}
BUCKET_CALLS = ["HeadBucket", "HeadObject", "GetObject", "PutObject", "ListObjectsV2",
                "CopyObject", "DeleteObject"]
DISTRIBUTION_CALLS = ["CreateInvalidation", "ListInvalidations", "GetInvalidation"]


class Invalidation:
    def __init__(self, inv_id, created, wildcards, files):
        self.id, self.created, self.wildcards, self.files = inv_id, created, wildcards, files


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.options = {}  # ("bucket"|"distribution", name) -> dict
        self.calls = {}  # ("bucket"|"distribution", name) -> {op: n}
        self.algorithms = {}  # (bucket, key, moto etag) -> algorithm of that upload
        self.checksums = {}  # (algorithm, bucket, key, moto etag) -> base64 value
        self.kms_etags = {}  # shown etag -> moto etag
        self.invalidations = {}  # distribution -> [Invalidation], oldest first
        self.references = {}  # distribution -> {caller ref: (paths, status, headers, body, inv id)}
        self.dist_locks = {}  # distribution -> Lock held through CreateInvalidation
        self.event_bridge = set()  # buckets whose notification configuration enables EventBridge
        self.listing = {}  # bucket -> ListObjectsV2 in flight now
        self.indexes = {}  # bucket -> sorted keys, for s3_list (new keys inserted, dropped on a delete)

    def opts(self, kind, name):
        with self.lock:
            o = dict(BUCKET_DEFAULTS if kind == "bucket" else DISTRIBUTION_DEFAULTS)
            o.update(self.options.get((kind, name), {}))
            return o

    def configure(self, kind, name, new):
        defaults = BUCKET_DEFAULTS if kind == "bucket" else DISTRIBUTION_DEFAULTS
        for k, v in new.items():
            if k not in defaults:
                raise ValueError(f"unknown {kind} option {k!r}; known: {sorted(defaults)}")
            if v is not None and (not isinstance(v, _TYPES[k])
                                  or (_TYPES[k] is int and isinstance(v, bool))):
                raise ValueError(f"option {k!r} wants {_TYPES[k]}, got {v!r}")
        with self.lock:
            self.options.setdefault((kind, name), {}).update(new)
        return self.opts(kind, name)

    def take(self, kind, name, counter):
        """Consumes one unit of a "next N requests" counter; True if there was one."""
        with self.lock:
            o = self.options.get((kind, name), {})
            if o.get(counter, 0) > 0:
                o[counter] -= 1
                return True
            return False

    def count(self, kind, name, op):
        with self.lock:
            c = self.calls.setdefault((kind, name), {})
            c[op] = c.get(op, 0) + 1

    def calls_of(self, kind, name):
        with self.lock:
            out = {op: 0 for op in (BUCKET_CALLS if kind == "bucket" else DISTRIBUTION_CALLS)}
            out.update(self.calls.get((kind, name), {}))
            return out

    def note_upload(self, bucket, key, etag, algo):
        with self.lock:
            self.algorithms[(bucket, key, etag)] = algo

    def dist_lock(self, dist):
        with self.lock:
            return self.dist_locks.setdefault(dist, threading.Lock())


STATE = State()

# --- small WSGI helpers ----------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body=b""):
        self.status = int(status.split()[0]) if isinstance(status, str) else int(status)
        self.reason = status.split(" ", 1)[1] if isinstance(status, str) and " " in status else None
        self.headers = list(headers)
        self.body = body

    def get(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def set(self, name, value):
        self.drop(lambda k: k == name.lower())
        self.headers.append((name, value))

    def drop(self, pred):
        self.headers = [(k, v) for k, v in self.headers if not pred(k.lower())]

    def send(self, start_response, head=False):
        from http import HTTPStatus

        reason = self.reason
        if reason is None:
            try:
                reason = HTTPStatus(self.status).phrase
            except ValueError:
                reason = "Unknown"
        body = b"" if head else self.body
        if not head or self.get("content-length") is None:
            self.set("Content-Length", str(len(self.body)))
        start_response(f"{self.status} {reason}", self.headers)
        return [body]


def call_inner(inner, environ):
    captured = {}
    chunks = []

    def start_response(status, headers, exc_info=None):
        captured["status"], captured["headers"] = status, headers
        return chunks.append

    it = inner(environ, start_response)
    try:
        for c in it:
            chunks.append(c)
    finally:
        if hasattr(it, "close"):
            it.close()
    return Response(captured["status"], captured["headers"], b"".join(chunks))


def read_body(environ):
    try:
        n = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        n = 0
    body = environ["wsgi.input"].read(n) if n > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def header(environ, name):
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


def request_id():
    return uuid.uuid4().hex[:16].upper()


def json_response(start_response, status, obj):
    return Response(status, [("Content-Type", "application/json")],
                    json.dumps(obj).encode()).send(start_response)


def credential_scope(environ):
    """(region, service) of a SigV4-signed request, or None."""
    auth = environ.get("HTTP_AUTHORIZATION") or ""
    m = re.search(r"Credential=([^,\s]+)", auth)
    cred = m.group(1) if m else None
    if cred is None:
        q = parse_qs(environ.get("QUERY_STRING", ""))
        cred = (q.get("X-Amz-Credential") or [None])[0]
    if not cred:
        return None
    parts = cred.split("/")
    if len(parts) != 5:
        return None
    return parts[2], parts[3]


def path_of(environ):
    p = environ.get("PATH_INFO", "")
    try:
        return p.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return p


# --- S3 ----------------------------------------------------------------------------------------


def s3_operation(method, bucket, key, query, environ):
    has = lambda q: q in query  # noqa: E731
    copy = header(environ, "x-amz-copy-source") is not None
    if not key:
        if method == "HEAD":
            return "HeadBucket"
        sub = {"location": "GetBucketLocation", "versioning": "BucketVersioning",
               "policy": "BucketPolicy", "acl": "BucketAcl", "tagging": "BucketTagging",
               "encryption": "BucketEncryption", "uploads": "ListMultipartUploads",
               "versions": "ListObjectVersions", "delete": "DeleteObjects",
               "lifecycle": "BucketLifecycle", "cors": "BucketCors",
               "notification": "BucketNotification", "website": "BucketWebsite"}
        for q, name in sub.items():
            if has(q):
                if name.startswith("Bucket"):
                    return {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}.get(method, "") + name
                return name
        if method == "GET":
            return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, method + "Bucket")
    if method == "HEAD":
        return "HeadObject"
    if method == "GET":
        if has("uploadId"):
            return "ListParts"
        for q, name in (("tagging", "GetObjectTagging"), ("acl", "GetObjectAcl"),
                        ("attributes", "GetObjectAttributes"), ("retention", "GetObjectRetention"),
                        ("legal-hold", "GetObjectLegalHold")):
            if has(q):
                return name
        return "GetObject"
    if method == "PUT":
        if has("uploadId") and has("partNumber"):
            return "UploadPartCopy" if copy else "UploadPart"
        for q, name in (("tagging", "PutObjectTagging"), ("acl", "PutObjectAcl"),
                        ("retention", "PutObjectRetention"), ("legal-hold", "PutObjectLegalHold")):
            if has(q):
                return name
        return "CopyObject" if copy else "PutObject"
    if method == "DELETE":
        if has("tagging"):
            return "DeleteObjectTagging"
        return "AbortMultipartUpload" if has("uploadId") else "DeleteObject"
    if method == "POST":
        if has("uploads"):
            return "CreateMultipartUpload"
        if has("uploadId"):
            return "CompleteMultipartUpload"
        if has("restore"):
            return "RestoreObject"
        return "PostObject"
    return method + "Object"


def s3_error(status, code, message, region, head, extra=""):
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{extra}"
            f"<RequestId>{request_id()}</RequestId><HostId>strict</HostId></Error>").encode()
    headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id())]
    if region:
        headers.append(("x-amz-bucket-region", region))
    return Response(status, headers, b"" if head else body)


def moto_bucket(name):
    from moto.s3.models import s3_backends

    where = s3_backends.bucket_accounts.get(name)
    if where is None:
        return None
    partition, account = where
    return s3_backends[account][partition].buckets.get(name)


def moto_key(bucket, key):
    b = moto_bucket(bucket)
    if b is None:
        return None
    try:
        return b.keys[key] if key in b.keys else None
    except Exception:
        return None


def kms_etag(real_hex):
    shown = hashlib.md5(("kms:" + real_hex).encode()).hexdigest()
    with STATE.lock:
        STATE.kms_etags[shown] = real_hex
    return shown


def translate_condition(value):
    """An If-Match-style value from a client of a KMS bucket, in moto's ETags."""
    out = []
    for part in value.split(","):
        v = part.strip()
        if v == "*":
            out.append(v)
            continue
        hexv = v.removeprefix("W/").strip('"')
        with STATE.lock:
            real = STATE.kms_etags.get(hexv)
        # A value this bucket never showed (e.g. the body's MD5) must match nothing.
        out.append(f'"{real}"' if real else '"strict-etag-that-matches-nothing"')
    return ", ".join(out)


_ETAG_XML = re.compile(rb"<ETag>(&#34;|&quot;|\")?([0-9a-f]{32})(&#34;|&quot;|\")?</ETag>")


def object_checksum(bucket, key, moto_etag):
    """(algorithm, base64) S3 would hold for this object version, or None (object changed)."""
    with STATE.lock:
        algo = STATE.algorithms.get((bucket, key, moto_etag), "CRC64NVME")
        cached = STATE.checksums.get((algo, bucket, key, moto_etag))
    if cached:
        return algo, cached
    k = moto_key(bucket, key)
    if k is None:
        return None
    data = k.value
    if hashlib.md5(data).hexdigest() != moto_etag and k.etag.strip('"') != moto_etag:
        return None
    value = checksum_b64(algo, data)
    with STATE.lock:
        STATE.checksums[(algo, bucket, key, moto_etag)] = value
    return algo, value


def handle_s3(environ, start_response, inner, region_signed):
    method = environ["REQUEST_METHOD"]
    path = path_of(environ)
    parts = path.lstrip("/").split("/", 1)
    bucket = parts[0]
    key = parts[1] if len(parts) > 1 else ""
    if not bucket:
        return inner(environ, start_response)
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    op = s3_operation(method, bucket, key, query, environ)
    STATE.count("bucket", bucket, op)
    if op == "HeadObject":
        STATE.count("bucket", bucket, "HeadObject " + key)
    head = method == "HEAD"
    if op == "CreateBucket":
        return inner(environ, start_response)
    o = STATE.opts("bucket", bucket)
    region = o["region"]
    if region is None:
        b = moto_bucket(bucket)
        region = b.region_name if b is not None else None
    if region and region_signed and region_signed != region:
        extra = (f"<Bucket>{escape(bucket)}</Bucket>"
                 f"<Endpoint>{escape(bucket)}.s3.{region}.amazonaws.com</Endpoint>")
        return s3_error(301, "PermanentRedirect",
                        "The bucket you are attempting to access must be addressed using the "
                        "specified endpoint. Please send all future requests to this endpoint.",
                        region, head, extra).send(start_response, head)
    if STATE.take("bucket", bucket, "expired_token"):
        return s3_error(400, "ExpiredToken", "The provided token has expired.", region,
                        head).send(start_response, head)
    if op in (o["access_denied"] or []):
        return s3_error(403, "AccessDenied", "Access Denied", region,
                        head).send(start_response, head)
    conditional = header(environ, "if-match") is not None or header(environ, "if-none-match") is not None
    if op == "PutObject" and conditional and STATE.take("bucket", bucket, "conflict"):
        return s3_error(409, "ConditionalRequestConflict",
                        "A conflicting conditional operation is currently in progress against "
                        "this resource. Please try again.", region, head).send(start_response)
    if op in ("PutObject", "CopyObject", "CompleteMultipartUpload") and key:
        # A new key joins the index where it sorts (a PUT that fails leaves a name the page
        # skips); a deploy's 200,000 PUTs do not cost a sort each.
        with STATE.lock:
            keys = STATE.indexes.get(bucket)
            if keys is not None:
                i = bisect.bisect_left(keys, key)
                if i == len(keys) or keys[i] != key:
                    keys.insert(i, key)
    elif op in ("DeleteObject", "DeleteObjects"):
        with STATE.lock:
            STATE.indexes.pop(bucket, None)
    if op == "ListObjectsV2" and (o["list_ms"] or o["s3_list"]) and not o["kms"]:
        return list_objects(environ, start_response, inner, bucket, o, query)
    if op in ("GetBucketNotification", "PutBucketNotification"):
        return s3_notification(environ, start_response, inner, bucket)
    if o["kms"]:
        for h in ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_X_AMZ_COPY_SOURCE_IF_MATCH",
                  "HTTP_X_AMZ_COPY_SOURCE_IF_NONE_MATCH"):
            if environ.get(h):
                environ[h] = translate_condition(environ[h])

    r = call_inner(inner, environ)

    if region:
        r.set("x-amz-bucket-region", region)
    ok = 200 <= r.status < 300
    moto_etag = (r.get("etag") or "").strip('"')
    if op in ("HeadObject", "GetObject") and ok:
        r.drop(lambda k: k.startswith("x-amz-checksum-") or k == "x-amz-sdk-checksum-algorithm")
        mode = (header(environ, "x-amz-checksum-mode") or "").upper() == "ENABLED"
        whole = r.status == 200 and "partNumber" not in query
        if o["checksums"] and mode and whole and re.fullmatch(r"[0-9a-f]{32}", moto_etag):
            got = object_checksum(bucket, key, moto_etag)
            if got:
                r.set(f"x-amz-checksum-{got[0].lower()}", got[1])
                r.set("x-amz-checksum-type", "FULL_OBJECT")
    if op == "PutObject" and not o["checksums"]:
        r.drop(lambda k: k.startswith("x-amz-checksum-"))
    if o["kms"]:
        if re.fullmatch(r"[0-9a-f]{32}", moto_etag):
            r.set("ETag", f'"{kms_etag(moto_etag)}"')
        if op in ("PutObject", "HeadObject", "GetObject", "CopyObject") and ok:
            r.set("x-amz-server-side-encryption", "aws:kms")
        if r.body and b"<ETag>" in r.body:
            r.body = _ETAG_XML.sub(
                lambda m: b"<ETag>" + (m.group(1) or b"") + kms_etag(m.group(2).decode()).encode()
                + (m.group(3) or b"") + b"</ETag>", r.body)
    return r.send(start_response, head)


# --- CloudFront --------------------------------------------------------------------------------

_CF_PATH = re.compile(r"^/2020-05-31/distribution/([^/]+)(/config|/invalidation(?:/([^/]+))?)?/?$")
_UNSAFE = set('"#<>\\^`{|}[] ')
_HEX = set("0123456789abcdefABCDEF")


def cf_error(status, code, message, typ="Sender"):
    body = ('<?xml version="1.0"?>\n'
            '<ErrorResponse xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/">'
            f"<Error><Type>{typ}</Type><Code>{code}</Code><Message>{escape(message)}</Message>"
            f"</Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()
    return Response(status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id())],
                     body)


def path_problem(p):
    if not p.startswith("/"):
        return "does not start with '/'"
    if "*" in p[:-1]:
        return "has '*' elsewhere than as the last character"
    if len(p) > 4000:
        return "is longer than 4,000 characters"
    for i, ch in enumerate(p):
        if ord(ch) > 126 or ord(ch) < 33:
            return f"holds {ch!r}, which must be percent-encoded"
        if ch in _UNSAFE:
            return f"holds {ch!r}, which must be percent-encoded"
        if ch == "%" and not (len(p[i + 1:i + 3]) == 2 and set(p[i + 1:i + 3]) <= _HEX):
            return "holds '%' not followed by two hex digits"
    return None


def parse_batch(body):
    root = ElementTree.fromstring(body)
    ns = ""
    if root.tag.startswith("{"):
        ns = root.tag[: root.tag.index("}") + 1]
    ref = root.findtext(f"{ns}CallerReference")
    quantity = root.findtext(f"{ns}Paths/{ns}Quantity")
    paths = [e.text or "" for e in root.findall(f"{ns}Paths/{ns}Items/{ns}Path")]
    return ref, (int(quantity) if quantity and quantity.strip().isdigit() else None), paths


def status_of(inv, secs, now):
    return "InProgress" if now - inv.created < secs else "Completed"


def rewrite_statuses(dist, body, secs):
    """Puts AWS's status words in an invalidation XML body (when in_progress_secs is set)."""
    if not secs:
        return body
    now = time.monotonic()
    with STATE.lock:
        known = {i.id: i for i in STATE.invalidations.get(dist, [])}

    def fix(m):
        block = m.group(0)
        idm = re.search(rb"<Id>([^<]+)</Id>", block)
        inv = known.get(idm.group(1).decode()) if idm else None
        if inv is None:
            return block
        st = status_of(inv, secs, now).encode()
        return re.sub(rb"<Status>[^<]*</Status>", b"<Status>" + st + b"</Status>", block, count=1)

    return re.sub(rb"<(InvalidationSummary|Invalidation)[\s>].*?</\1>", fix, body, flags=re.S)


def newest_first(body):
    """ListInvalidations: AWS lists newest first, moto oldest first (single page only)."""
    if b"<IsTruncated>true</IsTruncated>" in body:
        return body
    items = re.findall(rb"<InvalidationSummary>.*?</InvalidationSummary>", body, flags=re.S)
    if len(items) < 2:
        return body
    it = iter(reversed(items))
    return re.sub(rb"<InvalidationSummary>.*?</InvalidationSummary>", lambda m: next(it), body,
                  flags=re.S)


def handle_cloudfront(environ, start_response, inner):
    m = _CF_PATH.match(path_of(environ))
    if not m:
        return inner(environ, start_response)
    dist, tail, inv_id = m.group(1), m.group(2) or "", m.group(3)
    method = environ["REQUEST_METHOD"]
    if tail.startswith("/invalidation"):
        op = ("GetInvalidation" if inv_id else
              {"POST": "CreateInvalidation", "GET": "ListInvalidations"}.get(method, method + "Invalidation"))
    elif tail == "/config":
        op = {"GET": "GetDistributionConfig", "PUT": "UpdateDistribution"}.get(method, method + "DistributionConfig")
    else:
        op = {"GET": "GetDistribution", "DELETE": "DeleteDistribution"}.get(method, method + "Distribution")
    STATE.count("distribution", dist, op)
    if STATE.take("distribution", dist, "expired_token"):
        return cf_error(403, "ExpiredToken",
                        "The security token included in the request is expired").send(start_response)
    o = STATE.opts("distribution", dist)
    secs = float(o["in_progress_secs"] or 0)
    if op == "CreateInvalidation":
        return create_invalidation(environ, start_response, inner, dist, o, secs)
    r = call_inner(inner, environ)
    if 200 <= r.status < 300 and op in ("GetInvalidation", "ListInvalidations"):
        r.body = rewrite_statuses(dist, r.body, secs)
        if op == "ListInvalidations":
            r.body = newest_first(r.body)
    return r.send(start_response)


def create_invalidation(environ, start_response, inner, dist, o, secs):
    if STATE.take("distribution", dist, "throttle"):
        return cf_error(400, "Throttling", "Rate exceeded").send(start_response)
    body = read_body(environ)
    try:
        ref, quantity, paths = parse_batch(body)
    except ElementTree.ParseError as e:
        return cf_error(400, "MalformedInput", f"Could not parse the invalidation batch: {e}").send(start_response)
    wildcards = sum(1 for p in paths if p.endswith("*"))
    files = len(paths) - wildcards
    if o["validate_paths"]:
        if quantity != len(paths):
            return cf_error(400, "InconsistentQuantities",
                            f"The value of Quantity ({quantity}) and the size of Items "
                            f"({len(paths)}) don't match.").send(start_response)
        for p in paths:
            problem = path_problem(p)
            if problem:
                return cf_error(400, "InvalidArgument",
                                f"Your request contains one or more invalid invalidation paths: "
                                f"{p!r} {problem}.").send(start_response)
        if len(paths) > 3000:
            return cf_error(400, "BatchTooLarge",
                            "Invalidation batch specified is too large.").send(start_response)
    with STATE.dist_lock(dist):
        r = None
        if o["caller_reference"] and ref is not None:
            with STATE.lock:
                seen = STATE.references.get(dist, {}).get(ref)
            if seen is not None:
                if seen[0] != sorted(paths):
                    return cf_error(409, "InvalidationBatchAlreadyExists",
                                    "The CallerReference you are using to create an invalidation "
                                    "batch is associated with another batch.").send(start_response)
                r = Response(seen[1], seen[2], rewrite_statuses(dist, seen[3], secs))
        if r is None:
            # The new batch is in progress itself, so it counts even when nothing else is.
            now = time.monotonic()
            with STATE.lock:
                busy = [i for i in STATE.invalidations.get(dist, []) if now - i.created < secs]
            if (sum(i.wildcards for i in busy) + wildcards > 15
                    or sum(i.files for i in busy) + files > 3000):
                return cf_error(400, "TooManyInvalidationsInProgress",
                                "Your request contains too many invalidations in progress.",
                                ).send(start_response)
            r = call_inner(inner, environ)
            if r.status == 201:
                idm = re.search(rb"<Id>([^<]+)</Id>", r.body)
                if idm:
                    inv = Invalidation(idm.group(1).decode(), time.monotonic(), wildcards, files)
                    with STATE.lock:
                        STATE.invalidations.setdefault(dist, []).append(inv)
                        if ref is not None:
                            STATE.references.setdefault(dist, {}).setdefault(
                                ref, (sorted(paths), r.status, list(r.headers), r.body, inv.id))
                    moto_edge.invalidated(dist, paths, inv.created + secs)
                r.body = rewrite_statuses(dist, r.body, secs)
    if STATE.take("distribution", dist, "lose_answer"):
        return cf_error(503, "ServiceUnavailable", "CloudFront is temporarily unavailable.",
                        "Receiver").send(start_response)
    return r.send(start_response)


# --- the control endpoint and the dispatcher ---------------------------------------------------


def control(environ, start_response):
    path = path_of(environ)
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    kinds = [k for k in ("bucket", "distribution") if k in q]
    try:
        if environ["REQUEST_METHOD"] == "POST" and path in ("/_strict", "/_strict/"):
            req = json.loads(read_body(environ) or b"{}")
            kinds = [k for k in ("bucket", "distribution") if k in req]
            if len(kinds) != 1 or not isinstance(req[kinds[0]], str):
                raise ValueError('name exactly one of "bucket" or "distribution" (a string)')
            kind = kinds[0]
            name = req.pop(kind)
            return json_response(start_response, 200, STATE.configure(kind, name, req))
        if environ["REQUEST_METHOD"] == "GET" and len(kinds) == 1:
            if path == "/_strict/calls":
                return json_response(start_response, 200, STATE.calls_of(kinds[0], q[kinds[0]]))
            if path in ("/_strict", "/_strict/"):
                return json_response(start_response, 200, STATE.opts(kinds[0], q[kinds[0]]))
        raise ValueError("use POST /_strict {json}, GET /_strict?bucket=NAME, "
                         "GET /_strict/calls?bucket=NAME (or distribution=ID)")
    except ValueError as e:  # json errors included
        return json_response(start_response, 400, {"error": str(e)})


def lambda_code(environ, start_response):
    """GET /_lambda_code/<region>/<name>: the function's zip, as the presigned URL serves it."""
    from moto.awslambda.models import lambda_backends

    parts = path_of(environ).split("/")
    if len(parts) != 4 or environ["REQUEST_METHOD"] != "GET":
        return Response(404, [], b"").send(start_response)
    region, name = parts[2], parts[3]
    for account in list(lambda_backends.keys()):
        backend = lambda_backends[account].get(region)
        try:
            fn = backend.get_function(name) if backend is not None else None
        except Exception:
            fn = None
        if fn is not None:
            return Response(200, [("Content-Type", "application/zip")],
                            bytes(fn.code_bytes)).send(start_response)
    return Response(403, [("Content-Type", "application/xml")],
                    b"<Error><Code>AccessDenied</Code></Error>").send(start_response)


def handle_lambda(environ, start_response, inner, region):
    """GetFunction: Code.Location pointed at this server (see the module's doc)."""
    path = path_of(environ)
    m = re.fullmatch(r"/2015-03-31/functions/([^/]+)/?", path)
    if environ["REQUEST_METHOD"] != "GET" or not m:
        return inner(environ, start_response)
    resp = call_inner(inner, environ)
    if resp.status != 200:
        return resp.send(start_response)
    doc = json.loads(resp.body)
    name = doc.get("Configuration", {}).get("FunctionName") or unquote(m.group(1))
    if "Location" in doc.get("Code", {}):
        host = environ.get("HTTP_HOST") or f"127.0.0.1:{environ.get('SERVER_PORT')}"
        doc["Code"]["Location"] = (f"http://{host}/_lambda_code/{region}/{name}"
                                   f"?X-Amz-Signature={uuid.uuid4().hex}")
    resp.body = json.dumps(doc).encode()
    return resp.send(start_response)


def list_objects(environ, start_response, inner, bucket, o, query):
    """ListObjectsV2 with S3's cost (list_ms) and, with s3_list, S3's answer from an index."""
    with STATE.lock:
        now = STATE.listing.get(bucket, 0) + 1
        STATE.listing[bucket] = now
        c = STATE.calls.setdefault(("bucket", bucket), {})
        c["ListObjectsV2 in flight"] = max(c.get("ListObjectsV2 in flight", 0), now)
    try:
        if o["list_ms"]:
            time.sleep(o["list_ms"] / 1000)
        if not o["s3_list"] or "delimiter" in query or "continuation-token" in query:
            return inner(environ, start_response)
        return indexed_page(bucket, query).send(start_response)
    finally:
        with STATE.lock:
            STATE.listing[bucket] -= 1


def indexed_page(bucket, query):
    from urllib.parse import quote

    b = moto_bucket(bucket)
    if b is None:
        return s3_error(404, "NoSuchBucket", "The specified bucket does not exist", None, False)
    with STATE.lock:
        keys = STATE.indexes.get(bucket)
    if keys is None:
        keys = sorted(b.keys.keys())
        with STATE.lock:
            keys = STATE.indexes.setdefault(bucket, keys)
    q = lambda k: (query.get(k) or [""])[0]  # noqa: E731
    prefix, after = q("prefix"), q("start-after")
    max_keys = min(int(q("max-keys") or 1000), 1000)
    url = q("encoding-type") == "url"
    found = []
    with STATE.lock:  # PUTs insert into `keys`: the page is read from it in one piece
        # Keys after start-after, from the prefix on.
        i = bisect.bisect_right(keys, after) if after >= prefix else bisect.bisect_left(keys, prefix)
        j = i
        while j < len(keys) and len(found) < max_keys and keys[j].startswith(prefix):
            k = keys[j]
            j += 1
            fk = b.keys.get(k)
            if fk is not None:
                found.append((k, fk))
        truncated = j < len(keys) and keys[j].startswith(prefix)
    rows = []
    for k, fk in found:
        name = quote(k, safe="/") if url else escape(k)
        rows.append(f"<Contents><Key>{name}</Key><LastModified>{fk.last_modified_ISO8601}"
                    f"</LastModified><ETag>{escape(fk.etag)}</ETag><Size>{fk.size}</Size>"
                    f"<StorageClass>STANDARD</StorageClass></Contents>")
    enc = "<EncodingType>url</EncodingType>" if url else ""
    body = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
            f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{escape(bucket)}</Name>'
            f"<Prefix>{escape(prefix)}</Prefix><StartAfter>{escape(after)}</StartAfter>"
            f"<KeyCount>{len(rows)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>{enc}"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{''.join(rows)}"
            f"</ListBucketResult>").encode()
    return Response(200, [("Content-Type", "application/xml"),
                          ("x-amz-request-id", request_id())], body)


def s3_notification(environ, start_response, inner, bucket):
    """Put/GetBucketNotificationConfiguration with EventBridgeConfiguration kept, as AWS does."""
    if environ["REQUEST_METHOD"] == "PUT":
        body = read_body(environ)
        on = b"EventBridgeConfiguration" in body
        resp = call_inner(inner, environ)
        if resp.status == 200:
            with STATE.lock:
                (STATE.event_bridge.add if on else STATE.event_bridge.discard)(bucket)
        return resp.send(start_response)
    resp = call_inner(inner, environ)
    if resp.status == 200 and bucket in STATE.event_bridge:
        end = resp.body.rfind(b"</NotificationConfiguration>")
        if end >= 0:
            resp.body = resp.body[:end] + b"<EventBridgeConfiguration/>" + resp.body[end:]
        else:  # an empty configuration answered as a self-closing element
            resp.body = re.sub(rb"<NotificationConfiguration([^>]*)/>",
                               rb"<NotificationConfiguration\1><EventBridgeConfiguration/>"
                               rb"</NotificationConfiguration>", resp.body)
    return resp.send(start_response)


def strict_call(self, environ, start_response):
    path = environ.get("PATH_INFO", "")
    if moto_edge.owns(path):
        return moto_edge.route(environ, start_response, sys.modules[__name__])
    if path == "/_strict" or path.startswith("/_strict/"):
        return control(environ, start_response)
    if path.startswith("/_lambda_code/"):
        return lambda_code(environ, start_response)
    inner = lambda env, sr: _dispatch(self, env, sr)  # noqa: E731
    if path.startswith("/moto-api"):
        return inner(environ, start_response)
    scope = credential_scope(environ)
    if scope is None:
        return inner(environ, start_response)
    region, service = scope
    try:
        if service == "s3":
            return handle_s3(environ, start_response, inner, region)
        if service == "cloudfront":
            return handle_cloudfront(environ, start_response, inner)
        if service == "lambda":
            return handle_lambda(environ, start_response, inner, region)
    except Exception as e:
        import traceback

        traceback.print_exc()
        return Response(500, [("Content-Type", "text/plain")],
                        f"strict layer failed: {e!r}".encode()).send(start_response)
    return inner(environ, start_response)


from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: E402

_dispatch = DomainDispatcherApplication.__call__
DomainDispatcherApplication.__call__ = strict_call

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
