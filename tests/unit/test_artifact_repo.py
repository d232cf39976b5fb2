import pytest
from mlflow.store.artifact.artifact_repo import (
    MultipartDownloadMixin,
    MultipartUploadMixin,
    PresignedUploadMixin,
)
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlstack_platform.artifact_repo import ProxiedS3ArtifactRepository


def test_scheme_is_registered_and_offers_no_presigned_urls(monkeypatch):
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://minio:9000")
    repo = get_artifact_repository("s3-proxied://mlflow-artifacts/1/abc/artifacts")
    assert isinstance(repo, ProxiedS3ArtifactRepository)
    # What MLflow's server-info checks before advertising presigned transfers to clients,
    # which cannot reach the internal S3 endpoint.
    for mixin in (MultipartDownloadMixin, MultipartUploadMixin, PresignedUploadMixin):
        assert not isinstance(repo, mixin)
    assert repo._s3.artifact_uri == "s3://mlflow-artifacts/1/abc/artifacts"


def test_a_full_store_is_answered_with_a_message_and_no_retryable_status(monkeypatch):
    from boto3.exceptions import S3UploadFailedError

    from mlstack_platform.artifact_repo import ArtifactStoreFull, ProxiedS3ArtifactRepository

    repo = ProxiedS3ArtifactRepository("s3-proxied://bucket/1/run/artifacts")

    def full(*args, **kwargs):  # what boto3 raises when MinIO answers 507
        raise S3UploadFailedError("Failed to upload /tmp/x to bucket/1/run/artifacts/x: An error "
                                  "occurred (XMinioStorageFull) when calling the PutObject "
                                  "operation: Storage backend has reached its minimum free "
                                  "drive threshold.")

    monkeypatch.setattr(repo._s3, "log_artifact", full)
    with pytest.raises(ArtifactStoreFull, match="the artifact store is full") as raised:
        repo.log_artifact("/tmp/x", "data")
    assert raised.value.get_http_status_code() == 409  # clients retry 429 and 5xx, not this
