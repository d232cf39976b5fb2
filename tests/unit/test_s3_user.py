"""MLflow's own S3 key: what its MinIO policy grants, and what init says when it cannot make
it. (The e2e stack makes it for real, through the S3 stand-in's copy of MinIO's admin API.)"""

from __future__ import annotations

import socket

import pytest

from mlstack_platform import s3_user


def test_the_policy_reaches_the_artifact_bucket_and_nothing_else():
    statements = s3_user.policy("mlflow-artifacts")["Statement"]
    resources = {r for statement in statements for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::mlflow-artifacts", "arn:aws:s3:::mlflow-artifacts/*"}
    actions = {a for statement in statements for a in statement["Action"]}
    assert "s3:*" not in actions and not any(a.startswith("admin:") for a in actions)
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= actions
    assert not {"s3:DeleteBucket", "s3:PutBucketPolicy", "s3:CreateBucket"} & actions


def test_an_unreachable_minio_is_a_clear_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(s3_user.S3UserError, match="could not create MLflow's S3 user"):
        s3_user.ensure(f"http://127.0.0.1:{port}", "root", "root-password", "mlstack-mlflow",
                       "a-secret-key", "mlflow-artifacts")
