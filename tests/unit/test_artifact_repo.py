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


class _Body:
    def __init__(self, data: bytes):
        self.data, self.closed = data, False

    def iter_chunks(self, size):
        for i in range(0, len(self.data), size):
            yield self.data[i:i + size]

    def close(self):
        self.closed = True


class _S3:
    """What the repository asks of boto3 to open a file: get_object, and a listing."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def get_object(self, Bucket, Key):  # noqa: N803 (boto3's names)
        from botocore.exceptions import ClientError

        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        return {"Body": _Body(self.objects[Key]), "ContentLength": len(self.objects[Key])}


def test_a_download_streams_the_object_and_names_what_is_missing(monkeypatch):
    from mlflow.exceptions import MlflowException

    from mlstack_platform.artifact_download import _chunks

    repo = ProxiedS3ArtifactRepository("s3-proxied://bucket")
    s3 = _S3({"1/run/artifacts/model.bin": b"x" * 2500})
    monkeypatch.setattr(repo._s3, "_get_s3_client", lambda: s3)
    monkeypatch.setattr(repo, "list_artifacts",
                        lambda path=None: ["something"] if path == "1/run/artifacts" else [])

    body, length = repo.open_file("1/run/artifacts/model.bin")
    assert length == 2500
    chunks = _chunks(body, 1000)
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert body.closed  # given back to the pool once sent

    with pytest.raises(MlflowException, match="no artifact at") as missing:
        repo.open_file("1/run/artifacts/missing.bin")
    assert missing.value.get_http_status_code() == 404
    with pytest.raises(MlflowException, match="a directory, not a file") as folder:
        repo.open_file("1/run/artifacts")
    assert folder.value.get_http_status_code() == 400


def _repo_with_mlflows_client(monkeypatch, endpoint: str, objects: set[str]):
    """The repository with MLflow's own boto3 client for ENDPOINT (presigning needs no
    network), whose HEAD answers from OBJECTS as S3 does."""
    from botocore.exceptions import ClientError

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mlflow-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mlflow-secret")
    repo = ProxiedS3ArtifactRepository("s3-proxied://mlflow-artifacts")
    client = repo._s3._get_s3_client()

    def head_object(Bucket, Key):  # noqa: N803 (boto3's names)
        if Key not in objects:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")  # HEAD has no body
        return {}

    monkeypatch.setattr(client, "head_object", head_object)
    monkeypatch.setattr(repo, "list_artifacts",
                        lambda path=None: ["something"] if path == "1/run/artifacts" else [])
    return repo


def test_a_download_is_handed_to_nginx_with_a_url_of_that_file_alone(monkeypatch):
    from urllib.parse import parse_qs, urlsplit

    from flask import Flask
    from mlflow.exceptions import MlflowException

    from mlstack_platform.artifact_download import _handed_to_nginx

    repo = _repo_with_mlflows_client(monkeypatch, "http://minio:9000",
                                     {"1/run/artifacts/a model (1).bin"})
    with Flask(__name__).app_context():
        response = _handed_to_nginx(repo, "1/run/artifacts/a model (1).bin")
    assert response.headers["X-Accel-Redirect"] == "@mlstack_artifact_store"
    assert response.get_data() == b""
    # What nginx's location takes: a path-style, Signature Version 4 GET of MinIO's.
    store = urlsplit(response.headers["X-Mlstack-Artifact-Store"])
    assert store.path == "/mlflow-artifacts/1/run/artifacts/a%20model%20%281%29.bin"
    query = parse_qs(store.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "X-Amz-Signature" in query
    assert query["X-Amz-Expires"] == ["900"]
    # What is not there is answered as MLflow's handler answers it, and nothing is signed.
    with pytest.raises(MlflowException, match="no artifact at") as missing:
        repo.presigned_get("1/run/artifacts/missing.bin", 60)
    assert missing.value.get_http_status_code() == 404
    with pytest.raises(MlflowException, match="a directory, not a file") as folder:
        repo.presigned_get("1/run/artifacts", 60)
    assert folder.value.get_http_status_code() == 400


def test_a_store_nginx_cannot_reach_is_streamed_through_mlflow_instead(monkeypatch):
    from flask import Flask

    from mlstack_platform.artifact_download import _handed_to_nginx

    repo = _repo_with_mlflows_client(monkeypatch, "https://s3.example.com",
                                     {"1/run/artifacts/model.bin"})
    with Flask(__name__).app_context():
        assert _handed_to_nginx(repo, "1/run/artifacts/model.bin") is None


def test_a_client_that_goes_away_mid_download_closes_the_s3_body():
    from mlstack_platform.artifact_download import _chunks

    body = _Body(b"y" * 5000)
    chunks = _chunks(body, 1000)
    next(chunks)
    chunks.close()  # what the WSGI server does when the client is gone
    assert body.closed


def test_the_scheme_is_registered_when_the_server_app_is_imported_first():
    """gunicorn imports mlstack_platform.app before anything else; MLflow then loads its
    artifact repository plugins, ours among them (an import cycle once left it unregistered,
    and every artifact upload failed)."""
    import subprocess
    import sys

    code = ("import mlstack_platform.app\n"
            "from mlflow.store.artifact.artifact_repository_registry import "
            "get_artifact_repository\n"
            "print(type(get_artifact_repository('s3-proxied://bucket/x')).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ,
                              "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"})
    assert out.stdout.strip() == "ProxiedS3ArtifactRepository", out.stderr[-2000:]


class _Uploads:
    def __init__(self, fail_with: Exception | None = None):
        self.calls, self.fail_with = [], fail_with

    def upload_fileobj(self, stream, bucket, key, ExtraArgs, Config):  # noqa: N803
        if self.fail_with:
            raise self.fail_with
        self.calls.append((stream.read(), bucket, key, ExtraArgs, Config))


def test_an_upload_goes_to_s3_as_it_arrives_in_bounded_parts(monkeypatch):
    import io

    repo = ProxiedS3ArtifactRepository("s3-proxied://bucket")
    uploads = _Uploads()
    monkeypatch.setattr(repo._s3, "_get_s3_client", lambda: uploads)
    repo.log_artifact_from_stream(io.BytesIO(b"weights"), "model.json",
                                  artifact_path="1/run/artifacts/model")
    [(data, bucket, key, extra, config)] = uploads.calls
    assert (data, bucket, key) == (b"weights", "bucket", "1/run/artifacts/model/model.json")
    assert extra["ContentType"] == "application/json"
    # What MLflow may hold of an upload at once: parts in flight, not the whole body.
    assert config.multipart_chunksize * config.max_concurrency <= 32 << 20


def test_a_streamed_upload_to_a_full_store_says_so():
    import io

    from boto3.exceptions import S3UploadFailedError

    from mlstack_platform.artifact_repo import ArtifactStoreFull

    repo = ProxiedS3ArtifactRepository("s3-proxied://bucket")
    uploads = _Uploads(S3UploadFailedError(
        "Failed to upload: An error occurred (XMinioStorageFull) when calling the UploadPart "
        "operation: Storage backend has reached its minimum free drive threshold."))
    repo._s3._get_s3_client = lambda: uploads
    with pytest.raises(ArtifactStoreFull, match="the artifact store is full"):
        repo.log_artifact_from_stream(io.BytesIO(b"x"), "x.bin", artifact_path="1/run/artifacts")
