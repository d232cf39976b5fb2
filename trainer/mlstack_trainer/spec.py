"""The job spec a team member submits (YAML or JSON), validated before it is queued.

    name: digits-baseline            # optional; defaults to the entrypoint's name
    experiment: digits               # MLflow experiment (created if missing)
    entrypoint: example:digits-cnn   # example:NAME | module:PACKAGE.MODULE:FUNCTION
                                     # | project:DIR or project:DIR:ENTRY_POINT (an MLproject)
    params: {epochs: 5, learning_rate: 0.001}
    env: {TF_CPP_MIN_LOG_LEVEL: "2"}
    resources: {gpus: 1, timeout_seconds: 3600}
    mixed_precision: false
    retries: 1                       # re-runs after a worker died mid-job
    register_model: digits-classifier

Every mistake is reported at once, each with the field it concerns and what to write instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

EXAMPLES = ("digits-cnn", "breast-cancer-mlp", "diabetes-mlp")
MAX_TIMEOUT_S = 7 * 24 * 3600

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_PROJECT_DIR = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[\w./-]+$")
_PROJECT_ENTRY = re.compile(r"^[\w.-]+$")
# Set by the worker for every job; a spec may not change where results go.
_RESERVED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLSTACK_TB_LOGDIR")


class SpecError(ValueError):
    """The spec is invalid; `problems` lists every mistake found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid job spec:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Entrypoint:
    kind: str    # "example" | "module" | "project"
    target: str  # example name, "package.module:function", or "DIR[:ENTRY_POINT]" under the
                 # projects dir

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class JobSpec:
    name: str
    experiment: str
    entrypoint: Entrypoint
    params: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 0
    timeout_s: int = 3600
    mixed_precision: bool = False
    retries: int = 0
    register_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "experiment": self.experiment, "entrypoint": str(self.entrypoint),
            "params": self.params, "env": self.env,
            "resources": {"gpus": self.gpus, "timeout_seconds": self.timeout_s},
            "mixed_precision": self.mixed_precision, "retries": self.retries,
            "register_model": self.register_model,
        }


_TOP = {"name", "experiment", "entrypoint", "params", "env", "resources", "mixed_precision",
        "retries", "register_model"}
_RESOURCES = {"gpus", "timeout_seconds"}


def _type_name(value: Any) -> str:
    return {str: "text", bool: "true/false", int: "a whole number", float: "a number",
            list: "a list", dict: "a mapping", type(None): "nothing"}.get(type(value),
                                                                          type(value).__name__)


def _whole(problems: list[str], where: str, value: Any, lo: int, hi: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: expected a whole number, got {_type_name(value)} {value!r}")
        return default
    if not lo <= value <= hi:
        problems.append(f"{where}: {value} is out of range {lo}..{hi}")
    return value


def _entrypoint(problems: list[str], value: Any) -> Entrypoint | None:
    if value is None:
        problems.append("entrypoint: missing; write e.g. 'entrypoint: example:digits-cnn', "
                        "'module:mypackage.train:main' or 'project:my-project'")
        return None
    if not isinstance(value, str):
        problems.append(f"entrypoint: expected text, got {_type_name(value)}")
        return None
    kind, _, target = value.partition(":")
    if kind == "example":
        if target not in EXAMPLES:
            problems.append(f"entrypoint: unknown example {target!r}; "
                            f"the examples are {', '.join(EXAMPLES)}")
            return None
    elif kind == "module":
        if not _MODULE_ENTRY.match(target):
            problems.append(f"entrypoint: {value!r} is not 'module:PACKAGE.MODULE:FUNCTION'")
            return None
    elif kind == "project":
        directory, _, entry = target.partition(":")
        if not _PROJECT_DIR.match(directory):
            problems.append(f"entrypoint: {directory!r} must be a relative directory inside the "
                            "projects directory (no '..', no leading '/')")
            return None
        if ":" in target and not _PROJECT_ENTRY.match(entry):
            problems.append(f"entrypoint: {entry!r} is not an MLproject entry point name; write "
                            "'project:DIR' for its 'main' or 'project:DIR:ENTRY_POINT'")
            return None
    else:
        problems.append(f"entrypoint: {value!r} must start with 'example:', 'module:' or "
                        "'project:'")
        return None
    return Entrypoint(kind, target)


def _default_name(entrypoint: Entrypoint) -> str:
    if entrypoint.kind == "project":  # DIR[:ENTRY]: the directory's last part
        return entrypoint.target.split(":")[0].rstrip("/").split("/")[-1]
    return entrypoint.target.split(":")[-1]


def validate(data: Any) -> JobSpec:
    """Check a parsed spec; raise SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError([f"the spec must be a mapping of fields, got {_type_name(data)}"])
    problems: list[str] = []
    for key in sorted(set(data) - _TOP, key=str):
        problems.append(f"{key}: unknown field; the fields are {', '.join(sorted(_TOP))}")

    entrypoint = _entrypoint(problems, data.get("entrypoint"))

    experiment = data.get("experiment")
    if experiment is None:
        problems.append("experiment: missing; name the MLflow experiment the run goes to")
    elif not isinstance(experiment, str) or not experiment.strip():
        problems.append(f"experiment: expected non-empty text, got {_type_name(experiment)}")

    name = data.get("name", _default_name(entrypoint) if entrypoint else "job")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name: {name!r} must be 1-100 letters, digits, '_', '.', '-'")

    params = data.get("params") or {}
    if not isinstance(params, dict):
        problems.append(f"params: expected a mapping, got {_type_name(params)}")
        params = {}
    for key, value in params.items():
        if not isinstance(key, str):
            problems.append(f"params: key {key!r} must be text")
        elif not isinstance(value, (str, int, float, bool)):
            problems.append(f"params.{key}: expected text, a number or true/false, "
                            f"got {_type_name(value)}")

    env = data.get("env") or {}
    if not isinstance(env, dict):
        problems.append(f"env: expected a mapping, got {_type_name(env)}")
        env = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            problems.append(f"env: {key!r} is not a valid environment variable name")
        elif key in _RESERVED_ENV:
            problems.append(f"env.{key}: set by the trainer for every job; remove it")
        elif not isinstance(value, (str, int, float, bool)):
            problems.append(f"env.{key}: expected text, got {_type_name(value)}")

    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        problems.append(f"resources: expected a mapping, got {_type_name(resources)}")
        resources = {}
    for key in sorted(set(resources) - _RESOURCES, key=str):
        problems.append(f"resources.{key}: unknown field; the fields are "
                        f"{', '.join(sorted(_RESOURCES))}")
    gpus = _whole(problems, "resources.gpus", resources.get("gpus"), 0, 16, 0)
    timeout_s = _whole(problems, "resources.timeout_seconds", resources.get("timeout_seconds"),
                       1, MAX_TIMEOUT_S, 3600)
    retries = _whole(problems, "retries", data.get("retries"), 0, 10, 0)

    mixed = data.get("mixed_precision", False)
    if not isinstance(mixed, bool):
        problems.append(f"mixed_precision: expected true or false, got {_type_name(mixed)}")

    register = data.get("register_model")
    if register is not None and (not isinstance(register, str) or not register.strip()):
        problems.append(f"register_model: expected a model name, got {_type_name(register)}")

    if problems:
        raise SpecError(problems)
    assert entrypoint is not None
    return JobSpec(
        name=name, experiment=experiment.strip(), entrypoint=entrypoint,
        params=dict(params), env={k: str(v) for k, v in env.items()}, gpus=gpus,
        timeout_s=timeout_s, mixed_precision=mixed, retries=retries,
        register_model=register.strip() if register else None)


def parse(text: str) -> JobSpec:
    """Parse YAML (a superset of JSON) and validate it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError([f"not valid YAML or JSON{where}: {getattr(exc, 'problem', exc)}"])
    return validate(data)


def dumps(spec: JobSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)
