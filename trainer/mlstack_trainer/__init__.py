"""mlstack's trainer: job specs, the PostgreSQL job queue, the worker and the job runtime.

Work in progress (issue 3): spec, queue, worker and runtime exist and are tested with real
PostgreSQL, MLflow and Keras; the jobs API, the CLI, the trainer image and its compose
services do not yet.
"""
