"""A real S3 HTTP endpoint for tests: moto's threaded server on 127.0.0.1 and a free port.

moto in server mode speaks the S3 REST API over HTTP and enforces conditional writes
(``IfNoneMatch``/``IfMatch`` answer 412), so the store is tested through boto3 exactly as it talks to
AWS. What moto does *not* do: reject a body whose ``ChecksumSHA256`` header is wrong, and enforce
``IfNoneMatch`` on CopyObject.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

_FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_bucket_numbers = itertools.count()


@contextmanager
def moto_s3_endpoint() -> Iterator[str]:
    """Start moto's S3 server; yield its endpoint URL (``http://127.0.0.1:<port>``)."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in _FAKE_CREDENTIALS}
    os.environ.update(_FAKE_CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@functools.lru_cache(maxsize=8)
def s3_client(endpoint_url: str):
    """A boto3 S3 client for the test endpoint (path-style, fake credentials); thread-safe, shared."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


def new_bucket(endpoint_url: str, stem: str = "distillery-test") -> str:
    """Create a fresh, validly named bucket (versioning on, like the real artifact bucket)."""
    name = f"{stem}-{os.getpid()}-{next(_bucket_numbers)}"
    client = s3_client(endpoint_url)
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name
