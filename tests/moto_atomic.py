"""moto_server for the tests, with S3 conditional writes made atomic.

Real S3 checks If-Match / If-None-Match and writes as one step. moto 5.2 checks in its response
layer and writes later without a lock, so under load two PutObjects with the same If-Match can
both succeed (seen in the fleet-race test: 11 grants for a quota of 10). The tests must exercise
purgewatch against the semantics of S3, so PutObject is serialised here; nothing else changes.
"""

import sys
import threading

from moto.s3.responses import S3Response

_lock = threading.Lock()
_put_object = S3Response.put_object


def put_object(self, *args, **kwargs):
    with _lock:
        return _put_object(self, *args, **kwargs)


S3Response.put_object = put_object

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
