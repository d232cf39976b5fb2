"""The artifact store behind MLflow's artifact proxy: S3 (MinIO), reached by the server alone.

Since MLflow 3.x a server whose artifact destination is S3 advertises presigned multipart
downloads and uploads in /server-info (mlflow/mlflow#20352), and stock clients then fetch
artifacts straight from the S3 endpoint. Here that endpoint (http://minio:9000) sits on an
internal network that team members cannot reach, and they hold no S3 credentials by design:
every byte must go through the proxy. This repository therefore offers S3's plain operations
only, without the multipart/presigned mixins, so the server neither advertises presigned URLs
nor gives a client one. (It presigns a download for nginx alone, which fetches the file for
the client: presigned_get, artifact_download.py.) Registered for the `s3-proxied://` scheme
(pyproject.toml entry point) and used as `--artifacts-destination s3-proxied://BUCKET`.
"""

from __future__ import annotations

import mimetypes
import os
import posixpath
import tempfile

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ABORTED, RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.artifact_repo import ArtifactRepository, StreamUploadMixin
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

SCHEME = "s3-proxied"

# How MinIO says its disk is full: HTTP 507 with this error code (in boto3's message).
_STORAGE_FULL = ("XMinioStorageFull", "StorageFull")


class ArtifactStoreFull(MlflowException):
    """Raised instead of S3's error so that the client gets an answer that says what happened.
    ABORTED is HTTP 409: MLflow clients retry 429 and 5xx for minutes, which would only delay
    the same answer, and the full disk is not the client's to fix."""

    def __init__(self, path: str):
        super().__init__(
            f"the artifact store is full: MinIO has no free space left, so {path!r} was not "
            "stored (artifacts stored earlier are unaffected). Ask the operator to free space "
            "(scripts/gc removes deleted runs for good) or grow the disk, then log it again.",
            error_code=ABORTED)


def _refuse_if_full(exc: Exception, path: str) -> None:
    if any(marker in str(exc) for marker in _STORAGE_FULL):
        raise ArtifactStoreFull(path) from exc


# An upload through the proxy goes to S3 as it arrives, in parts of 8 MB, two in flight: MLflow
# holds ~16-24 MB of it at a time, whatever its size (rather than a temporary file of it all).
_STREAMING_UPLOAD = {"multipart_threshold": 8 << 20, "multipart_chunksize": 8 << 20,
                     "max_concurrency": 2}


class ProxiedS3ArtifactRepository(ArtifactRepository, StreamUploadMixin):
    def __init__(self, artifact_uri: str, tracking_uri: str | None = None,
                 registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri, tracking_uri, registry_uri)
        if not artifact_uri.startswith(f"{SCHEME}://"):
            raise ValueError(f"not a {SCHEME}:// URI: {artifact_uri}")
        s3_uri = "s3://" + artifact_uri[len(SCHEME) + 3:]
        self._s3 = S3ArtifactRepository(s3_uri, tracking_uri=tracking_uri,
                                         registry_uri=registry_uri)

    def log_artifact(self, local_file, artifact_path=None):
        try:
            return self._s3.log_artifact(local_file, artifact_path)
        except Exception as exc:
            _refuse_if_full(exc, artifact_path or local_file)
            raise

    def log_artifacts(self, local_dir, artifact_path=None):
        try:
            return self._s3.log_artifacts(local_dir, artifact_path)
        except Exception as exc:
            _refuse_if_full(exc, artifact_path or local_dir)
            raise

    def log_artifact_from_stream(self, stream, artifact_file_name, artifact_path=None):
        """MLflow's upload handler (`PUT /api/2.0/mlflow-artifacts/artifacts/...`) hands the
        request body here instead of writing it to a temporary file first (which put a 1 GiB
        upload in the MLflow container's page cache: +1.1 GB in `docker stats`)."""
        from boto3.s3.transfer import TransferConfig

        bucket, key = self._s3.parse_s3_compliant_uri(self._s3.artifact_uri)
        if artifact_path:
            key = posixpath.join(key, artifact_path)
        key = posixpath.join(key, posixpath.basename(artifact_file_name))
        extra_args = dict(self._s3._bucket_owner_params)
        guessed_type, guessed_encoding = mimetypes.guess_type(artifact_file_name)
        if guessed_type:
            extra_args["ContentType"] = guessed_type
        if guessed_encoding:
            extra_args["ContentEncoding"] = guessed_encoding
        extra_args.update(self._s3.get_s3_file_upload_extra_args() or {})
        try:
            self._s3._get_s3_client().upload_fileobj(
                stream, bucket, key, ExtraArgs=extra_args,
                Config=TransferConfig(**_STREAMING_UPLOAD))
        except Exception as exc:
            _refuse_if_full(exc, posixpath.join(artifact_path or "", artifact_file_name))
            raise

    async def log_artifact_from_async_stream(self, chunks, artifact_file_name,
                                             artifact_path=None):
        # MLflow's FastAPI route (uvicorn only; the platform serves Flask under gunicorn).
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, posixpath.basename(artifact_file_name))
            with open(path, "wb") as f:
                async for chunk in chunks:
                    f.write(chunk)
            self.log_artifact(path, artifact_path)

    def list_artifacts(self, path=None):
        return self._s3.list_artifacts(path)

    def _download_file(self, remote_file_path, local_path):
        return self._s3._download_file(remote_file_path, local_path)

    def download_artifacts(self, artifact_path, dst_path=None):
        """A missing artifact is a 404 saying so (MLflow reports any failed download as an
        internal error, 500)."""
        try:
            return super().download_artifacts(artifact_path, dst_path)
        except MlflowException:
            if not self._exists(artifact_path):
                raise MlflowException(f"no artifact at {artifact_path!r}",
                                      error_code=RESOURCE_DOES_NOT_EXIST) from None
            raise

    def open_file(self, artifact_path: str):
        """S3's streaming body of one artifact file, and its length (artifact_download.py).
        A missing file is a 404 and a folder a 400, as MLflow's own handler answers them."""
        bucket, key = self._bucket_and_key(artifact_path)
        try:
            found = self._s3._get_s3_client().get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            self._refuse_if_missing(exc, artifact_path)
            raise
        return found["Body"], found["ContentLength"]

    def presigned_get(self, artifact_path: str, expires_s: int) -> str:
        """A GET of one artifact file, presigned for expires_s seconds, once S3 has said the
        file is there (a missing file or a folder is answered as open_file answers it). For
        nginx alone, which fetches the file with it (artifact_download.py)."""
        bucket, key = self._bucket_and_key(artifact_path)
        client = self._s3._get_s3_client()
        try:
            client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            self._refuse_if_missing(exc, artifact_path)
            raise
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s)

    def _bucket_and_key(self, artifact_path: str) -> tuple[str, str]:
        bucket, root = self._s3.parse_s3_compliant_uri(self._s3.artifact_uri)
        return bucket, posixpath.join(root, artifact_path)

    def _refuse_if_missing(self, exc: Exception, artifact_path: str) -> None:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError) or exc.response.get("Error", {}).get("Code") not in (
                "NoSuchKey", "404"):
            return
        if self.list_artifacts(artifact_path):
            raise MlflowException.invalid_parameter_value(
                f"Artifact path refers to a directory, not a file: '{artifact_path}'") from None
        raise MlflowException(f"no artifact at {artifact_path!r}",
                              error_code=RESOURCE_DOES_NOT_EXIST) from None

    def _exists(self, path: str) -> bool:
        path = path.strip("/")
        parent = posixpath.dirname(path)
        return any(f.path == path for f in self.list_artifacts(parent or None))

    def delete_artifacts(self, artifact_path=None):
        return self._s3.delete_artifacts(artifact_path)
