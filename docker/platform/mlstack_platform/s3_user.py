"""MLflow's own S3 key: a MinIO user whose policy reaches the artifact bucket alone.

MinIO's root keys read, write and delete every bucket and change MinIO itself; MLflow, the
janitor and the operator's bucket commands need the objects of the artifact bucket, nothing
more. init-secrets generates the key (`s3_access_key`, `s3_secret_key`); init, with the root
keys, creates the user in MinIO through its admin API (minio-py's admin client), a policy for
the bucket, and attaches it. Idempotent: every start sets the key and the policy again, so a
changed bucket name or a restored store follows.
"""

from __future__ import annotations

from urllib.parse import urlsplit

POLICY_NAME = "mlstack-artifacts"
# What MLflow's S3 artifact repository, its garbage collection and the bucket export/import
# do: objects (multipart uploads included) and listing, in the one bucket.
_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                   "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
_BUCKET_ACTIONS = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]


class S3UserError(RuntimeError):
    pass


def policy(bucket: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": _BUCKET_ACTIONS, "Resource": [f"arn:aws:s3:::{bucket}"]},
        {"Effect": "Allow", "Action": _OBJECT_ACTIONS, "Resource": [f"arn:aws:s3:::{bucket}/*"]},
    ]}


def ensure(endpoint_url: str, root_user: str, root_password: str, access_key: str,
           secret_key: str, bucket: str) -> str:
    from minio import MinioAdmin
    from minio.credentials import StaticProvider
    from minio.error import MinioAdminException
    from urllib3.exceptions import HTTPError

    url = urlsplit(endpoint_url)
    admin = MinioAdmin(endpoint=url.netloc, credentials=StaticProvider(root_user, root_password),
                       secure=url.scheme == "https")
    try:
        admin.policy_add(POLICY_NAME, policy=policy(bucket))
        admin.user_add(access_key, secret_key)
        try:
            admin.attach_policy([POLICY_NAME], user=access_key)
        except MinioAdminException as exc:  # attached before: MinIO says it is in effect
            if "already" not in str(exc).lower():
                raise
    except (MinioAdminException, HTTPError, OSError, ValueError) as exc:
        raise S3UserError(
            f"could not create MLflow's S3 user {access_key!r} in MinIO at {endpoint_url} "
            f"through its admin API: {exc}. MLflow needs it to store artifacts; check "
            "`docker compose logs minio` and that MINIO_IMAGE is MinIO") from exc
    return f"{access_key}, limited to the bucket {bucket}"
