"""The artifact bucket as a tar stream, for scripts/backup and scripts/restore.

Objects are read and written through the S3 API, never as MinIO's files on disk: MinIO's
on-disk layout (xl.meta parts) is its own business and changes between releases, while the
S3 API is the contract. Each object is one tar member named by its key, so a backup can be
inspected with plain `tar tf`. Streams both ways, so a 100 GB bucket needs no scratch space
in the container.
"""

from __future__ import annotations

import tarfile
import time
from typing import BinaryIO

from boto3.s3.transfer import TransferConfig

# Objects up to this size are sent in one PUT; larger ones as a multipart upload.
_TRANSFER = TransferConfig(multipart_threshold=64 * 1024 * 1024,
                           multipart_chunksize=64 * 1024 * 1024)


def objects(s3, bucket: str):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        yield from page.get("Contents", [])


def usage(s3, bucket: str) -> tuple[int, int]:
    """(number of objects, total bytes)."""
    count = size = 0
    for obj in objects(s3, bucket):
        count += 1
        size += obj["Size"]
    return count, size


def export(s3, bucket: str, out: BinaryIO) -> tuple[int, int]:
    """Write every object as a tar stream to `out`; return (objects, bytes)."""
    count = size = 0
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for obj in objects(s3, bucket):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])
            info = tarfile.TarInfo(obj["Key"])
            info.size = body["ContentLength"]
            info.mtime = int(obj["LastModified"].timestamp()) if obj.get("LastModified") \
                else int(time.time())
            info.mode = 0o644
            tar.addfile(info, body["Body"])
            count += 1
            size += info.size
    return count, size


def empty(s3, bucket: str) -> int:
    keys = [obj["Key"] for obj in objects(s3, bucket)]
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
    return len(keys)


class _Unseekable:
    """A tar member read from a stream: boto3 would ask it whether it can seek (it cannot),
    so offer `read` alone and boto3 reads it in order, chunk by chunk."""

    def __init__(self, member):
        self.read = member.read


def import_(s3, bucket: str, source: BinaryIO) -> tuple[int, int]:
    """Upload every regular member of the tar stream `source` as an object; return
    (objects, bytes). Existing objects with the same keys are overwritten."""
    count = size = 0
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            s3.upload_fileobj(_Unseekable(tar.extractfile(member)), bucket, member.name,
                              Config=_TRANSFER)
            count += 1
            size += member.size
    return count, size
