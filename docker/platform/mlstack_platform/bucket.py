"""The S3 bucket MLflow's artifact proxy writes to, created idempotently by init."""

from __future__ import annotations

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .waiting import wait_for


def client(endpoint: str, access_key: str, secret_key: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name="us-east-1",
        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}),
    )


def ensure(s3, name: str, timeout_s: float) -> str:
    def attempt() -> str:
        try:
            s3.head_bucket(Bucket=name)
            return "kept"
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
        s3.create_bucket(Bucket=name)
        return "created"

    return wait_for(
        f"the S3 store at {s3.meta.endpoint_url}", attempt, timeout_s,
        "Check `docker compose logs minio`.",
        fatal=lambda exc: isinstance(exc, ClientError)
        and exc.response.get("Error", {}).get("Code")
        in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "403"),
    )
