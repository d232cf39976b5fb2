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
