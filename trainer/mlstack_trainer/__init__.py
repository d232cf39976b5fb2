"""mlstack's trainer: one package, three programs.

- the jobs API (`api.py`, run by the `trainer-api` service): the queue's only door, and the
  only holder of the MLflow admin account that mints each job's identity;
- the worker (`worker.py`, the `trainer` service, or a GPU host of its own): claims jobs
  through the API and runs each one in a sandbox (`sandbox.py`) as `runtime.py`;
- the `mlstack` CLI (`cli.py`) that team members install.

DEVELOPING.md at the repository root maps every module.
"""
