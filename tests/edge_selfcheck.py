"""Self-check of the caching CloudFront edge (tests/moto_edge.py) behind tests/moto_atomic.py.

Usage: python tests/edge_selfcheck.py PORT
against an emulator already started with `python tests/moto_atomic.py -H 127.0.0.1 -p PORT`.
Exits 0 when every check passes, 1 otherwise (each failure printed).
"""

import gzip
import http.client
import json
import sys
import threading
import time
import uuid

import boto3
from botocore.config import Config

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
HOST = "127.0.0.1"
KW = dict(endpoint_url=f"http://{HOST}:{PORT}", aws_access_key_id="test",
          aws_secret_access_key="test", region_name="us-east-1")
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **KW)
cf = boto3.client("cloudfront", config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
                  **KW)

failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def req(method, path, headers=None, body=None):
    """(status, {lower header: value}, body) with exactly the headers given (no implicit
    Accept-Encoding, unlike http.client's default)."""
    c = http.client.HTTPConnection(HOST, PORT, timeout=10)
    c.putrequest(method, path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        c.putheader(k, v)
    if body is not None:
        c.putheader("Content-Length", str(len(body)))
    c.endheaders(body)
    r = c.getresponse()
    data = r.read()
    out = (r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    c.close()
    return out


def edge(dist, path, method="GET", ae=None, **extra):
    h = dict(extra)
    if ae is not None:
        h["Accept-Encoding"] = ae
    return req(method, f"/_edge/{dist}{path}", h)


def control(dist, method="GET"):
    st, _, body = req(method, f"/_strict/edge/{dist}")
    assert st == 200, (st, body)
    return json.loads(body)


def strict(**opts):
    st, _, body = req("POST", "/_strict", {"Content-Type": "application/json"},
                       json.dumps(opts).encode())
    assert st == 200, (st, body)


def put(bucket, key, body, ctype="text/html"):
    return s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=ctype)["ETag"]


def s3_etag(bucket, key):
    return s3.head_object(Bucket=bucket, Key=key)["ETag"]


def make_dist(domain, origin_path="", root="", aliases=None, website=False):
    origin = {"Id": "o1", "DomainName": domain, "OriginPath": origin_path}
    if website:
        origin["CustomOriginConfig"] = {"HTTPPort": 80, "HTTPSPort": 443,
                                        "OriginProtocolPolicy": "http-only"}
    else:
        origin["S3OriginConfig"] = {"OriginAccessIdentity": ""}
    cfg = {
        "CallerReference": uuid.uuid4().hex, "Comment": "edge selfcheck", "Enabled": True,
        "DefaultRootObject": root,
        "Origins": {"Quantity": 1, "Items": [origin]},
        "DefaultCacheBehavior": {"TargetOriginId": "o1", "ViewerProtocolPolicy": "allow-all",
                                 "MinTTL": 0, "ForwardedValues": {
                                     "QueryString": False, "Cookies": {"Forward": "none"}}},
    }
    if aliases:
        cfg["Aliases"] = {"Quantity": len(aliases), "Items": aliases}
    return cf.create_distribution(DistributionConfig=cfg)["Distribution"]


def invalidate(dist, paths, ref=None):
    return cf.create_invalidation(DistributionId=dist, InvalidationBatch={
        "Paths": {"Quantity": len(paths), "Items": paths},
        "CallerReference": ref or uuid.uuid4().hex})["Invalidation"]


def html(tag, n):
    """An HTML body of n bytes (compressible when n >= 1000)."""
    head = f"<html><!-- {tag} -->".encode()
    return head + b"x" * (n - len(head))


def main():
    run = uuid.uuid4().hex[:8]
    bucket = f"edge-check-{run}"
    s3.create_bucket(Bucket=bucket)
    put(bucket, "index.html", html("index v1", 300))
    today_v1 = html("today v1", 2000)
    e_today1 = put(bucket, "news/today.html", today_v1)
    put(bucket, "www/a.html", html("www a", 400))
    put(bucket, "www/index.html", html("www index", 400))
    put(bucket, "img.png", b"\x89PNG" + b"\0" * 3000, "image/png")
    put(bucket, "日本.html", html("nihon v1", 500))
    put(bucket, "a b.html", html("space", 500))

    # --- moto's DomainName / Aliases ------------------------------------------------------
    d = make_dist(f"{bucket}.s3.amazonaws.com", root="index.html",
                  aliases=["www.example.com", "example.com"])
    D = d["Id"]
    g = cf.get_distribution(Id=D)["Distribution"]
    check(g["DomainName"].endswith(".cloudfront.net"), f"DomainName {g['DomainName']}")
    check(g["DistributionConfig"].get("Aliases", {}).get("Items") == ["www.example.com", "example.com"],
          f"Aliases kept: {g['DistributionConfig'].get('Aliases')}")
    one = make_dist(f"{bucket}.s3.amazonaws.com", aliases=["one.example.com"])
    g1 = cf.get_distribution(Id=one["Id"])["Distribution"]["DistributionConfig"]["Aliases"]
    check(g1 == {"Quantity": 1, "Items": ["one.example.com"]}, f"one alias kept: {g1}")

    # --- miss, then hit, S3's ETag ---------------------------------------------------------
    st, h, body = edge(D, "/news/today.html", ae="identity")
    check(st == 200 and body == today_v1, f"first GET 200 with the body ({st})")
    check(h.get("etag") == e_today1, f"miss ETag {h.get('etag')} == S3 {e_today1}")
    check(h.get("x-cache") == "Miss from cloudfront", f"first GET is a miss: {h.get('x-cache')}")
    check(h.get("content-type") == "text/html", f"content-type {h.get('content-type')}")
    check(h.get("content-length") == str(len(today_v1)), "content-length")
    check(h.get("age") == "0", f"age on a miss {h.get('age')}")
    check("last-modified" in h and "content-encoding" not in h, "last-modified, no encoding")
    st, h, body = edge(D, "/news/today.html", ae="identity")
    check(st == 200 and h.get("x-cache") == "Hit from cloudfront", "second GET is a hit")
    check(h.get("etag") == e_today1 and body == today_v1, "hit: same ETag and body")
    check(h.get("age", "").isdigit(), "hit has Age")
    st, h, _ = edge(D, "/news/today.html?v=2", ae="identity")
    check(h.get("x-cache") == "Hit from cloudfront", "query string not in the cache key")
    st, h, body = edge(D, "/news/today.html", method="HEAD", ae="identity")
    check(st == 200 and body == b"" and h.get("etag") == e_today1
          and h.get("content-length") == str(len(today_v1)), "HEAD: headers, no body")
    st, h, _ = edge(D, "/news/today.html", ae="identity", **{"If-None-Match": e_today1})
    check(st == 304 and h.get("etag") == e_today1, f"If-None-Match -> 304 ({st})")

    # --- S3 changes: the edge keeps serving the old copy ----------------------------------
    today_v2 = html("today v2", 2100)
    e_today2 = put(bucket, "news/today.html", today_v2)
    check(e_today2 != e_today1 and s3_etag(bucket, "news/today.html") == e_today2, "S3 has v2")
    st, h, body = edge(D, "/news/today.html", ae="identity")
    check(h.get("etag") == e_today1 and body == today_v1 and h.get("x-cache", "").startswith("Hit"),
          f"stale after overwrite: {h.get('etag')}")

    # --- invalidations that do not match leave it stale -----------------------------------
    for paths in (["/news/today.htm"], ["/other/*"], ["/NEWS/*"], ["/news/today.html/"],
                  ["/news/today.html/*"], ["/index.html"]):
        invalidate(D, paths)
        st, h, _ = edge(D, "/news/today.html", ae="identity")
        check(h.get("etag") == e_today1, f"{paths} leaves the stale copy ({h.get('etag')})")
    # a refused invalidation (throttled) does not drop either
    strict(distribution=D, throttle=1)
    try:
        invalidate(D, ["/news/*"])
        check(False, "throttled invalidation refused")
    except cf.exceptions.ClientError as e:
        check(e.response["ResponseMetadata"]["HTTPStatusCode"] == 400, "throttled -> 400")
    st, h, _ = edge(D, "/news/today.html", ae="identity")
    check(h.get("etag") == e_today1, "a refused invalidation drops nothing")

    # --- the matching invalidation: the new bytes ----------------------------------------
    ref = uuid.uuid4().hex
    invalidate(D, ["/news/*"], ref)
    st, h, body = edge(D, "/news/today.html", ae="identity")
    check(h.get("etag") == e_today2 and body == today_v2 and h.get("x-cache", "").startswith("Miss"),
          f"after /news/* the new ETag ({h.get('etag')})")
    # a replay of the same CallerReference creates nothing and drops nothing
    today_v3 = html("today v3", 2200)
    put(bucket, "news/today.html", today_v3)
    invalidate(D, ["/news/*"], ref)
    st, h, _ = edge(D, "/news/today.html", ae="identity")
    check(h.get("etag") == e_today2, f"a CallerReference replay drops nothing ({h.get('etag')})")
    invalidate(D, ["/news/today.html"])  # an exact path
    st, h, body = edge(D, "/news/today.html", ae="identity")
    check(body == today_v3, "an exact-path invalidation drops the entry")
    e_today3 = h.get("etag")

    # --- compression -----------------------------------------------------------------------
    for ae in ("gzip", "gzip, deflate, br", "br;q=1, gzip;q=0.5", "*"):
        st, h, body = edge(D, "/news/today.html", ae=ae)
        ok = (h.get("content-encoding") == "gzip" and h.get("etag") == "W/" + e_today3
              and gzip.decompress(body) == today_v3 and h.get("content-length") == str(len(body)))
        check(ok, f"Accept-Encoding {ae!r}: gzip, weak ETag ({h.get('etag')}, "
                  f"{h.get('content-encoding')})")
    st, h, body = edge(D, "/news/today.html", method="HEAD", ae="gzip")
    check(body == b"" and h.get("content-encoding") == "gzip" and h.get("etag") == "W/" + e_today3,
          "HEAD with gzip: the gzip headers")
    for ae in ("identity", None, "gzip;q=0", "br", "deflate", "gzip;q=0, *"):
        st, h, body = edge(D, "/news/today.html", ae=ae)
        check("content-encoding" not in h and h.get("etag") == e_today3 and body == today_v3,
              f"Accept-Encoding {ae!r}: the object as is ({h.get('etag')}, "
              f"{h.get('content-encoding')})")
    st, h, body = edge(D, "/index.html", ae="gzip")  # 300 bytes: too small
    check("content-encoding" not in h and h.get("etag") == s3_etag(bucket, "index.html"),
          "under 1,000 bytes: not compressed")
    st, h, body = edge(D, "/img.png", ae="gzip")
    check("content-encoding" not in h and h.get("content-type") == "image/png",
          "image/png: not compressed")
    st, h, _ = edge(D, "/news/today.html", ae="gzip", **{"If-None-Match": e_today3})
    check(st == 304, f"If-None-Match with the strong ETag matches the weak one weakly ({st})")

    # --- default root object, encoded paths, misses not cached ----------------------------
    st, h, body = edge(D, "/", ae="identity")
    check(st == 200 and h.get("etag") == s3_etag(bucket, "index.html"), "/ -> DefaultRootObject")
    st, h, _ = edge(D, "/%E6%97%A5%E6%9C%AC.html", ae="identity")
    check(st == 200 and h.get("etag") == s3_etag(bucket, "日本.html"), f"percent-decoded key ({st})")
    st, h, _ = edge(D, "/a%20b.html", ae="identity")
    check(st == 200 and h.get("etag") == s3_etag(bucket, "a b.html"), f"%20 -> space ({st})")
    st, h, _ = edge(D, "/missing.html", ae="identity")
    check(st == 404 and h.get("x-cache") == "Error from cloudfront", f"missing -> 404 ({st})")
    put(bucket, "missing.html", html("now here", 100))
    st, h, _ = edge(D, "/missing.html", ae="identity")
    check(st == 200, "a 404 is not cached")
    st, _, _ = edge("ENOSUCHDIST", "/index.html")
    check(st == 404, "unknown distribution -> 404")
    st, _, _ = edge(D, "/index.html", method="POST")
    check(st == 403, "POST -> 403")

    # raw non-ASCII in an invalidation does not match the encoded viewer path
    strict(distribution=D, validate_paths=False)
    put(bucket, "日本.html", html("nihon v2", 500))
    invalidate(D, ["/日本.html"])
    st, h, _ = edge(D, "/%E6%97%A5%E6%9C%AC.html", ae="identity")
    check(h.get("x-cache", "").startswith("Hit"), "raw non-ASCII invalidation path matches nothing")
    invalidate(D, ["/%E6%97%A5*"])
    st, h, _ = edge(D, "/%E6%97%A5%E6%9C%AC.html", ae="identity")
    check(h.get("etag") == s3_etag(bucket, "日本.html"), "encoded wildcard invalidation matches")
    strict(distribution=D, validate_paths=True)

    # --- the control ------------------------------------------------------------------------
    c = control(D)
    check(c["cached"].get("/news/today.html") == e_today3, f"control cached: {c['cached']}")
    check("/missing.html" in c["cached"] and "/" in c["cached"], "control lists every entry")
    check(isinstance(c["hits"], int) and c["hits"] > 0 and c["misses"] > 0, "control counters")
    check(["GET", "/news/today.html?v=2", "identity"] not in c["requests"]
          and ["GET", "/news/today.html", "identity"] in c["requests"]
          and ["GET", "/news/today.html", None] in c["requests"]
          and ["HEAD", "/news/today.html", "gzip"] in c["requests"], "control requests")
    c = control(D, "DELETE")
    check(c == {"cached": {}, "hits": 0, "misses": 0, "requests": []}, f"DELETE clears: {c}")
    st, h, _ = edge(D, "/news/today.html", ae="identity")
    check(h.get("x-cache", "").startswith("Miss"), "after DELETE: a miss")
    check(control(D)["misses"] == 1, "counters restart")
    st, _, _ = req("PUT", f"/_strict/edge/{D}")
    check(st == 400, "control: other methods -> 400")

    # --- OriginPath /www, REST regional endpoint -------------------------------------------
    w = make_dist(f"{bucket}.s3.us-east-1.amazonaws.com", origin_path="/www", root="index.html")
    W = w["Id"]
    st, h, _ = edge(W, "/a.html", ae="identity")
    check(st == 200 and h.get("etag") == s3_etag(bucket, "www/a.html"), "OriginPath /www")
    st, h, _ = edge(W, "/", ae="identity")
    check(st == 200 and h.get("etag") == s3_etag(bucket, "www/index.html"), "OriginPath + root")
    put(bucket, "www/a.html", html("www a v2", 400))
    invalidate(D, ["/*"])  # another distribution's invalidation
    st, h, _ = edge(W, "/a.html", ae="identity")
    check(h.get("x-cache", "").startswith("Hit"), "another distribution's invalidation: no effect")
    invalidate(W, ["/a.html"])
    st, h, _ = edge(W, "/a.html", ae="identity")
    check(h.get("etag") == s3_etag(bucket, "www/a.html"), "/a.html invalidated on W")

    # --- dotted bucket, legacy s3-REGION endpoint; website endpoint ------------------------
    dotted = f"edge.check.{run}"
    s3.create_bucket(Bucket=dotted)
    put(dotted, "index.html", html("dotted", 200))
    x = make_dist(f"{dotted}.s3-us-east-1.amazonaws.com")
    st, h, _ = edge(x["Id"], "/index.html", ae="identity")
    check(st == 200 and h.get("etag") == s3_etag(dotted, "index.html"), f"dotted bucket ({st})")
    st, _, _ = edge(x["Id"], "/", ae="identity")
    check(st == 404, "/ without DefaultRootObject on a REST origin -> 404")
    s3.put_bucket_website(Bucket=bucket, WebsiteConfiguration={
        "IndexDocument": {"Suffix": "index.html"}})
    site = make_dist(f"{bucket}.s3-website-us-east-1.amazonaws.com", website=True)
    st, h, _ = edge(site["Id"], "/www/", ae="identity")
    check(st == 200 and h.get("etag") == s3_etag(bucket, "www/index.html"), f"website index ({st})")

    # --- InProgress: stale until Completed (the layer's in_progress_secs) ------------------
    strict(distribution=W, in_progress_secs=1.5)
    edge(W, "/a.html", ae="identity")
    put(bucket, "www/a.html", html("www a v3", 400))
    inv = invalidate(W, ["/a.html"])
    st, h, _ = edge(W, "/a.html", ae="identity")
    check(inv["Status"] == "InProgress" and h.get("x-cache", "").startswith("Hit"),
          f"InProgress: still stale ({inv['Status']})")
    time.sleep(1.6)
    status = cf.get_invalidation(DistributionId=W, Id=inv["Id"])["Invalidation"]["Status"]
    st, h, _ = edge(W, "/a.html", ae="identity")
    check(status == "Completed" and h.get("etag") == s3_etag(bucket, "www/a.html"),
          f"Completed: the new bytes ({status})")

    # --- concurrency: one fill for many viewers --------------------------------------------
    control(D, "DELETE")
    invalidate(D, ["/*"])
    etags = []

    def viewer():
        etags.append(edge(D, "/news/today.html", ae="identity")[1].get("etag"))

    threads = [threading.Thread(target=viewer) for _ in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    c = control(D)
    check(set(etags) == {e_today3} and c["misses"] == 1 and c["hits"] == 15,
          f"16 concurrent viewers: one miss ({c['misses']} misses, {c['hits']} hits)")

    print(f"{checks - len(failures)}/{checks} checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
