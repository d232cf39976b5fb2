"""Runtime of the mlstack platform image: first-start setup (secrets, TLS, databases, bucket,
migrations, users) and the launch of the MLflow server. One image, several roles by command."""
