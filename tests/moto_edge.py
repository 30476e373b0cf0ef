"""A caching CloudFront edge for the test layer (tests/moto_atomic.py routes to it).

moto implements CloudFront's control plane only: distributions and invalidations exist, but nothing
serves a viewer, so a test cannot see whether an invalidation made viewers get the new bytes. This
module is that edge, on the emulator's own port, without auth (a viewer does not sign):

  GET|HEAD /_edge/<distribution-id><viewer path>
      e.g. GET /_edge/E2ABC/news/today.html. The viewer path is the raw path after the id, as sent
      (still percent-encoded); the query string is ignored (the default cache policy keeps it out
      of the cache key). An unknown distribution -> 404 text/plain.

  Cache key: (distribution id, raw viewer path). An entry is never dropped by time (no TTL): only an
  invalidation of the distribution that matches it, or the control's DELETE.

  Miss: the object is read straight from moto's S3 backend, in-process:
    - origin: the distribution's default cache behavior's TargetOriginId (the first origin when
      that names none; path-pattern cache behaviors are not modelled);
    - bucket from the origin's DomainName: BUCKET.s3.amazonaws.com, BUCKET.s3.REGION.amazonaws.com,
      BUCKET.s3-REGION.amazonaws.com (dotted bucket names too, dualstack too), or a website endpoint
      BUCKET.s3-website[-.]REGION.amazonaws.com (then the bucket's IndexDocument is appended to a
      key that is empty or ends with '/'). Any other origin -> 502 (not cached);
    - key: OriginPath + the percent-DECODED viewer path, without the leading '/'
      (origin path /www, viewer path /a%20b.html -> key "www/a b.html"); viewer path "/" with a
      DefaultRootObject -> that object (only "/", as CloudFront: not "/dir/");
    - the latest version of the key; missing (or a delete marker) -> 404 with S3's NoSuchKey XML
      and `X-Cache: Error from cloudfront`, never cached. (Real CloudFront caches error answers
      for 10 s by default - the error caching minimum TTL; not modelled, on purpose.)
    - cached: body, S3's ETag (quoted, as S3 gives it; for a bucket with the layer's `kms` option,
      the ETag the layer shows for it), Content-Type, Last-Modified, Content-Encoding if the object
      has one.
  Hit: the cached copy, whatever S3 holds now.
  Headers: ETag, Content-Type, Content-Length, Last-Modified, `X-Cache: Hit from cloudfront` /
  `Miss from cloudfront`, Age (whole seconds since the entry was cached; 0 on a miss). HEAD: the
  same headers, no body (a HEAD miss fills the cache as a GET would). If-None-Match with the ETag
  the answer would carry (weak comparison) -> 304. Methods other than GET/HEAD -> 403, as a
  distribution that allows only GET, HEAD.

  Compression (gzip only; brotli is not modelled): when the request's Accept-Encoding allows gzip
  (`gzip` or `x-gzip` with q > 0, or `*` with q > 0 and gzip not listed), the object's media type is
  one CloudFront compresses (AWS's list, below), its size is 1,000 to 10,000,000 bytes, it has no
  Content-Encoding of its own, and the default cache behavior does not say Compress=false: the
  answer is gzip with `Content-Encoding: gzip` and the ETag made weak, W/"..." (CloudFront's rule,
  see weak_etag). `Accept-Encoding: identity`, none, or `gzip;q=0`: the bytes as S3 holds them,
  with S3's ETag. A client that forgets to ask for identity gets different bytes and ETag.

  Invalidation (called by the layer's CreateInvalidation when it really creates an invalidation:
  not a replay of a CallerReference, not a refused request): every entry of the distribution whose
  raw viewer path equals a path of the batch, or starts with what precedes a final '*', is dropped
  when the invalidation completes (at once, unless the layer's in_progress_secs keeps it
  InProgress: then the stale copies are served until the status says Completed).
  Matching is case-sensitive and on the encoded form exactly as sent: CloudFront wants invalidation
  paths percent-encoded as viewers send them, so an invalidation path holding raw non-ASCII
  ("/日本.html") does not match the viewer path "/%E6%97%A5%E6%9C%AC.html" (strict on purpose; the
  layer refuses such a path anyway unless validate_paths is off). "/index.html" does not
  invalidate "/" served through the DefaultRootObject either: CloudFront caches them apart.

  Control, beside the layer's /_strict controls:
    GET    /_strict/edge/<dist>  {"cached": {viewer_path: etag}, "hits": n, "misses": n,
                                  "requests": [[method, viewer_path, accept_encoding|null], ...]}
                                 (the last 1000 requests, oldest first; etag as S3 gave it)
    DELETE /_strict/edge/<dist>  clears that distribution's cache, counters, requests and pending
                                 invalidations; answers the emptied state.
"""

import collections
import gzip
import json
import re
import threading
import time
from urllib.parse import unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

EDGE = "/_edge/"
CONTROL = "/_strict/edge/"
MAX_REQUESTS = 1000

# https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/ServingCompressedFiles.html
# ("Conditions for compression", "File types that CloudFront compresses")
GZIP_MIN, GZIP_MAX = 1_000, 10_000_000
COMPRESSIBLE = frozenset("""
application/dash+xml application/eot application/font application/font-sfnt
application/javascript application/json application/opentype application/otf
application/pkcs7-mime application/protobuf application/rss+xml application/truetype
application/ttf application/vnd.apple.mpegurl application/vnd.mapbox-vector-tile
application/vnd.ms-fontobject application/xhtml+xml application/xml application/x-font-opentype
application/x-font-truetype application/x-font-ttf application/x-httpd-cgi application/x-javascript
application/x-mpegurl application/x-opentype application/x-otf application/x-perl application/x-ttf
font/eot font/opentype font/otf font/ttf image/svg+xml text/css text/csv text/html
text/javascript text/js text/plain text/richtext text/tab-separated-values text/xml
text/x-component text/x-java-source text/x-script vnd.apple.mpegurl
""".split())


def weak_etag(etag):
    """The ETag CloudFront sends with an object it compressed itself.

    https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/ServingCompressedFiles.html#compressed-content-cloudfront-etag-header
    A valid strong ETag (beginning with '"') gets "W/" in front; a weak one (beginning with "W/")
    is passed unchanged; an invalid one (neither) is removed (None: no ETag header).
    """
    if etag is None:
        return None
    if etag.startswith('"'):
        return "W/" + etag
    if etag.startswith("W/"):
        return etag
    return None


class _Entry:
    __slots__ = ("body", "etag", "content_type", "last_modified", "content_encoding", "cached_at",
                 "gz")

    def __init__(self, body, etag, content_type, last_modified, content_encoding):
        self.body, self.etag, self.content_type = body, etag, content_type
        self.last_modified, self.content_encoding = last_modified, content_encoding
        self.cached_at = time.monotonic()
        self.gz = None  # the gzip body, made on the first answer that needs it


class _Dist:
    def __init__(self):
        self.entries = {}  # raw viewer path -> _Entry
        self.hits = 0
        self.misses = 0
        self.requests = collections.deque(maxlen=MAX_REQUESTS)
        self.pending = []  # (due, monotonic, [paths]) of invalidations still InProgress


_lock = threading.Lock()  # guards _dists; held through a miss's S3 read, so that a fill and an
_dists = {}  # dist id -> _Dist          # invalidation never interleave (no stale refill)


def _dist_state(dist):
    d = _dists.get(dist)
    if d is None:
        d = _dists[dist] = _Dist()
    return d


def _matches(path, viewer_path):
    # Exact, case-sensitive, on the encoded form as sent (see the module's doc).
    if path.endswith("*"):
        return viewer_path.startswith(path[:-1])
    return viewer_path == path


def _drop(d, paths):
    for vp in [vp for vp in d.entries if any(_matches(p, vp) for p in paths)]:
        del d.entries[vp]


def _apply_due(d, now):
    if d.pending:
        due = [p for p in d.pending if p[0] <= now]
        d.pending = [p for p in d.pending if p[0] > now]
        for _, paths in due:
            _drop(d, paths)


def invalidated(dist, paths, completes_at=None):
    """The hook: a new invalidation of `dist` for `paths` was created. completes_at: the
    time.monotonic() at which its status becomes Completed (None or past: now)."""
    paths = list(paths)
    with _lock:
        d = _dist_state(dist)
        if completes_at is not None and completes_at > time.monotonic():
            d.pending.append((completes_at, paths))
        else:
            _drop(d, paths)


# --- routing -----------------------------------------------------------------------------------


def owns(path):
    return path.startswith(EDGE) or path.startswith(CONTROL) or path == CONTROL.rstrip("/")


def route(environ, start_response, layer=None):
    """The layer's entry point; `layer` is the moto_atomic module (for its kms ETags)."""
    try:
        if environ.get("PATH_INFO", "").startswith(EDGE):
            return _viewer(environ, start_response, layer)
        return _control(environ, start_response)
    except Exception as e:
        import traceback

        traceback.print_exc()
        return _send(start_response, 500, [("Content-Type", "text/plain")],
                     f"edge failed: {e!r}".encode(), False)


def _send(start_response, status, headers, body, head):
    from http import HTTPStatus

    headers = [(k, v) for k, v in headers if v is not None]
    if not any(k.lower() == "content-length" for k, _v in headers):
        headers.append(("Content-Length", str(len(body))))
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [b"" if head else body]


def _raw_path(environ):
    """The request target's path exactly as sent (percent-encoding kept), without the query."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is None:  # not werkzeug: the best we have is the decoded path, re-encoded
        from urllib.parse import quote

        return quote(environ.get("PATH_INFO", ""), safe="/~!$&'()*+,;=:@%")
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*", raw)  # absolute-form
    if m:
        raw = raw[m.end():] or "/"
    raw = raw.split("?", 1)[0].split("#", 1)[0]
    try:  # werkzeug hands str made of latin-1 for the raw bytes
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


# --- the viewer side ---------------------------------------------------------------------------


def _distribution(dist_id):
    from moto.cloudfront.models import cloudfront_backends

    for account in list(cloudfront_backends.keys()):
        per_account = cloudfront_backends[account]
        for partition in list(per_account.keys()):
            d = per_account[partition].distributions.get(dist_id)
            if d is not None:
                return d
    return None


_WEBSITE = re.compile(
    r"^(?P<bucket>.+)\.s3-website[.-](?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_REST = re.compile(
    r"^(?P<bucket>.+)\.s3(?:[.-](?:dualstack\.)?(?P<region>[a-z0-9-]+))?\.amazonaws\.com(?:\.cn)?$")


def bucket_of(domain):
    """(bucket, website?) for an S3 origin domain name, or None."""
    domain = (domain or "").strip().rstrip(".").lower()
    m = _WEBSITE.match(domain)
    if m:
        return m.group("bucket"), True
    m = _REST.match(domain)
    if m:
        return m.group("bucket"), False
    return None


def _moto_bucket(name):
    from moto.s3.models import s3_backends

    where = s3_backends.bucket_accounts.get(name)
    if where is None:
        return None
    partition, account = where
    return s3_backends[account][partition].buckets.get(name)


def _index_suffix(bucket):
    conf = getattr(bucket, "website_configuration", None)
    if not conf:
        return None
    try:
        root = ElementTree.fromstring(conf)
    except ElementTree.ParseError:
        return None
    for el in root.iter():
        if el.tag.split("}")[-1] == "IndexDocument":
            for sub in el:
                if sub.tag.split("}")[-1] == "Suffix" and sub.text:
                    return sub.text
    return None


def _text(status, message):
    return status, [("Content-Type", "text/plain")], message.encode()


def _fetch(dist_obj, viewer_path, layer):
    """A miss: (_Entry, None) or (None, (status, headers, body)) for an answer not cached."""
    from moto.s3.models import FakeKey

    cfg = dist_obj.distribution_config
    origins = list((getattr(cfg, "Origins", None) or {}).get("Items") or [])
    if not origins:
        return None, _text(502, "edge: the distribution has no origin")
    target = getattr(getattr(cfg, "DefaultCacheBehavior", None), "target_origin_id", None)
    origin = next((o for o in origins if o.id == target), origins[0])
    found = bucket_of(origin.domain_name)
    if found is None:
        return None, _text(502, f"edge: origin {origin.domain_name!r} is not an S3 endpoint "
                                "(the edge reads only S3 origins)")
    bucket_name, website = found
    root = getattr(cfg, "DefaultRootObject", "") or ""
    target_path = "/" + root if viewer_path == "/" and root else unquote(viewer_path)
    key = ((origin.origin_path or "") + target_path)[1:]
    bucket = layer.moto_bucket(bucket_name) if layer is not None else _moto_bucket(bucket_name)
    if bucket is not None and website and (key == "" or key.endswith("/")):
        key += _index_suffix(bucket) or ""
    obj = bucket.keys.get(key) if bucket is not None and key else None
    if not isinstance(obj, FakeKey):
        code, msg = (("NoSuchKey", "The specified key does not exist.") if bucket is not None
                     else ("NoSuchBucket", "The specified bucket does not exist"))
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{msg}</Message>"
                f"<Key>{escape(key)}</Key></Error>").encode()
        return None, (404, [("Content-Type", "application/xml"),
                            ("X-Cache", "Error from cloudfront")], body)
    etag = obj.etag
    if layer is not None:
        hexv = etag.strip('"')
        if re.fullmatch(r"[0-9a-f]{32}", hexv) and layer.STATE.opts("bucket", bucket_name)["kms"]:
            etag = f'"{layer.kms_etag(hexv)}"'
    meta = obj.metadata
    return _Entry(bytes(obj.value), etag, meta.get("content-type") or "binary/octet-stream",
                  obj.last_modified_RFC1123, meta.get("content-encoding")), None


def accepts_gzip(value):
    """Whether an Accept-Encoding value lets the answer be gzip."""
    if not value:
        return False
    q = {}
    for part in value.split(","):
        bits = part.split(";")
        name = bits[0].strip().lower()
        if not name:
            continue
        weight = 1.0
        for b in bits[1:]:
            b = b.strip().lower()
            if b.startswith("q="):
                try:
                    weight = float(b[2:])
                except ValueError:
                    weight = 0.0
        q[name] = weight
    for name in ("gzip", "x-gzip"):
        if name in q:
            return q[name] > 0
    return q.get("*", 0.0) > 0


def _compressible(entry, compress_on):
    media = entry.content_type.split(";", 1)[0].strip().lower()
    return (compress_on and not entry.content_encoding and media in COMPRESSIBLE
            and GZIP_MIN <= len(entry.body) <= GZIP_MAX)


def _none_match(header, etag):
    """If-None-Match, weak comparison (RFC 9110 13.1.2)."""
    if not header or not etag:
        return False
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == opaque for t in header.split(","))


def _viewer(environ, start_response, layer):
    method = environ["REQUEST_METHOD"]
    raw = _raw_path(environ)
    rest = raw[len(EDGE):] if raw.startswith(EDGE) else environ["PATH_INFO"][len(EDGE):]
    dist, slash, tail = rest.partition("/")
    viewer_path = "/" + tail if slash else "/"
    ae = environ.get("HTTP_ACCEPT_ENCODING")
    head = method == "HEAD"
    with _lock:
        d = _dist_state(dist)
        d.requests.append([method, viewer_path, ae])
    dist_obj = _distribution(dist)
    if dist_obj is None:
        return _send(start_response, *_text(404, f"edge: no distribution {dist!r}"), head)
    if method not in ("GET", "HEAD"):
        return _send(start_response, *_text(
            403, "This distribution is not configured to allow the HTTP request method that was "
                 "used for this request. The distribution supports only cachable requests."), head)
    with _lock:
        _apply_due(d, time.monotonic())
        entry = d.entries.get(viewer_path)
        if entry is not None:
            d.hits += 1
            x_cache = "Hit from cloudfront"
        else:
            d.misses += 1
            x_cache = "Miss from cloudfront"
            entry, error = _fetch(dist_obj, viewer_path, layer)
            if entry is None:
                return _send(start_response, *error, head)
            d.entries[viewer_path] = entry
    age = int(time.monotonic() - entry.cached_at)
    compress_on = str(getattr(dist_obj.distribution_config.DefaultCacheBehavior, "compress",
                              True)).lower() != "false"
    body, etag, encoding = entry.body, entry.etag, entry.content_encoding
    if accepts_gzip(ae) and _compressible(entry, compress_on):
        if entry.gz is None:
            entry.gz = gzip.compress(entry.body, mtime=0)
        body, etag, encoding = entry.gz, weak_etag(entry.etag), "gzip"
    headers = [("Content-Type", entry.content_type), ("ETag", etag),
               ("Last-Modified", entry.last_modified), ("Content-Encoding", encoding),
               ("X-Cache", x_cache), ("Age", str(age))]
    if _none_match(environ.get("HTTP_IF_NONE_MATCH"), etag):
        return _send(start_response, 304, [h for h in headers if h[0] != "Content-Type"], b"",
                     True)
    headers.append(("Content-Length", str(len(body))))
    return _send(start_response, 200, headers, body, head)


# --- the control -------------------------------------------------------------------------------


def _state_json(d):
    return {"cached": {vp: e.etag for vp, e in d.entries.items()}, "hits": d.hits,
            "misses": d.misses, "requests": [list(r) for r in d.requests]}


def _control(environ, start_response):
    path = environ.get("PATH_INFO", "")
    dist = path[len(CONTROL):] if path.startswith(CONTROL) else ""
    method = environ["REQUEST_METHOD"]

    def answer(status, obj):
        return _send(start_response, status, [("Content-Type", "application/json")],
                     json.dumps(obj).encode(), False)

    if not dist or "/" in dist or method not in ("GET", "DELETE"):
        return answer(400, {"error": "use GET /_strict/edge/DIST (the edge's cache, counters and "
                                     "requests) or DELETE /_strict/edge/DIST (clears them)"})
    with _lock:
        if method == "DELETE":
            _dists.pop(dist, None)
        d = _dists.get(dist) or _Dist()
        _apply_due(d, time.monotonic())
        return answer(200, _state_json(d))
