"""mlstack's trainer: job specs, the PostgreSQL job queue, workers and the jobs API.

Work in progress (issue 3): the spec and the queue exist and are tested; the worker, the job
runtime, the jobs API, the CLI and their compose services do not yet.
"""
