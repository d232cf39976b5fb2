"""The job spec a team member submits (YAML or JSON), validated before it is queued.

    name: digits-baseline            # optional; defaults to the entrypoint's name
    experiment: digits               # MLflow experiment (created if missing)
    entrypoint: example:digits-cnn   # example:NAME | module:PACKAGE.MODULE:FUNCTION
                                     # | script:PATH.py (a file in the uploaded code)
                                     # | project:. | project:DIR | project:DIR:ENTRY_POINT
                                     #   | project::ENTRY_POINT (an MLproject; '.' or no DIR
                                     #   is the code's root; YAML needs 'project:' quoted)
    params: {epochs: 5, learning_rate: 0.001}
    env: {KERAS_BACKEND: tensorflow} # not for secrets: stored and shown to you and the admins
    resources: {gpus: 1, timeout_seconds: 3600}
    mixed_precision: false
    verbose: false                   # true keeps TensorFlow's start-up messages
    retries: 1                       # re-runs after a worker died mid-job
    register_model: digits-classifier

`JobSpec` is one pydantic model: it validates, serialises (`to_dict`, the wire format stored in
the queue) and documents (`JobSpec.model_json_schema()`). pydantic's own errors are rewritten
so that every mistake is reported at once, each with the field it concerns and what to write.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

EXAMPLES = ("digits-cnn", "breast-cancer-mlp", "diabetes-mlp")
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_ENV_VALUE = 4096

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_PATH = re.compile(r"^[A-Za-z0-9_./-]+$")  # ASCII only: the same bytes on every filesystem
_SCRIPT = re.compile(r"^(?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_][A-Za-z0-9_.-]*\.py$")
_PROJECT_ENTRY = re.compile(r"^[\w.-]+$")

# What a job may not put in `env`, and why. The job's process starts from these variables, so
# a loader or interpreter hook would run code before (and around) the job's own, certificate
# and proxy settings would redirect the platform's own traffic, and the rest are set by the
# platform for every job. Names ending in "*" are prefixes; matching is case-sensitive, like
# the variables themselves.
_LOADER = "it makes the dynamic loader inject libraries into every program the job starts"
_SHELL = "a shell runs or obeys it on start-up"
_START_UP = "it runs code when the interpreter starts"
_TRUST = "it changes which TLS certificates are trusted, for MLflow's traffic too"
_PROXY = "it routes the job's traffic, MLflow's included, through another host"
_ENV_REFUSED: dict[str, str] = {
    "LD_*": _LOADER, "DYLD_*": _LOADER,
    "PYTHON*": "it changes how Python starts and what it imports (PYTHONPATH, PYTHONSTARTUP)",
    "PIP_*": "it changes where pip installs packages from",
    "PATH": "it changes which programs run", "HOME": "the trainer sets it",
    "SHELL": _SHELL, "BASH_ENV": _SHELL, "ENV": _SHELL, "IFS": _SHELL, "PS4": _SHELL,
    "PROMPT_COMMAND": _SHELL,
    "PERL5LIB": _START_UP, "PERL5OPT": _START_UP, "NODE_OPTIONS": _START_UP,
    "JAVA_TOOL_OPTIONS": _START_UP,
    "REQUESTS_CA_BUNDLE": _TRUST, "CURL_CA_BUNDLE": _TRUST, "SSL_CERT_FILE": _TRUST,
    "SSL_CERT_DIR": _TRUST,
    **dict.fromkeys(("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                     "no_proxy", "ALL_PROXY", "all_proxy"), _PROXY),
    # Set by the platform for every job: they say where results go and which GPUs are the job's.
    "MLFLOW_*": "the platform decides where the run's results go",
    "MLSTACK_*": "the platform describes the job with them",
    "CUDA_VISIBLE_DEVICES": "the trainer assigns GPUs; ask for them with resources.gpus",
    "TMPDIR": "the trainer chooses the job's scratch directory",
}
_SET_BY_TRAINER = {"MLFLOW_*", "MLSTACK_*", "CUDA_VISIBLE_DEVICES", "TMPDIR", "HOME"}


class SpecError(ValueError):
    """The spec is invalid; `problems` lists every mistake found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid job spec:\n" + "\n".join(f"  - {p}" for p in problems))


def _relative_path(path: str) -> bool:
    """A path inside the uploaded code: no leading '/', no '..' component."""
    return bool(_PATH.match(path)) and not path.startswith("/") and ".." not in path.split("/")


@dataclass(frozen=True)
class Entrypoint:
    kind: str    # "example" | "module" | "script" | "project"
    target: str  # example name, "package.module:function", "path/file.py", or "DIR[:ENTRY]"
                 # where DIR is "." for an MLproject at the root of the code

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"

    @classmethod
    def parse(cls, value: Any) -> Entrypoint:
        """The entrypoint written as "kind:target"; ValueError says what to write instead."""
        if isinstance(value, Entrypoint):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected text such as 'example:digits-cnn', got {_got(value)}")
        kind, _, target = value.partition(":")
        if kind == "example":
            if target not in EXAMPLES:
                raise ValueError(f"unknown example {target!r}; the examples are "
                                 f"{', '.join(EXAMPLES)}")
        elif kind == "module":
            if not _MODULE_ENTRY.match(target):
                raise ValueError(f"{value!r} is not 'module:PACKAGE.MODULE:FUNCTION'")
        elif kind == "script":
            if not (_SCRIPT.match(target) and _relative_path(target)):
                raise ValueError(f"{target!r} must be the relative path of a .py file inside the "
                                 "uploaded code (letters, digits, '_', '.', '-', '/'; no '..', "
                                 "no leading '/'); write e.g. 'script:train.py' or "
                                 "'script:src/train.py'")
            target = str(PurePosixPath(target))  # "./train.py" is the archive's "train.py"
        elif kind == "project":
            directory, colon, entry = target.partition(":")
            if directory and not _relative_path(directory):
                raise ValueError(f"{directory!r} must be a relative directory inside the uploaded "
                                 "code (no '..', no leading '/'); write 'project:.' for an "
                                 "MLproject at its root")
            if colon and not _PROJECT_ENTRY.match(entry):
                raise ValueError(f"{entry!r} is not an MLproject entry point name; write "
                                 "'project:DIR' for its 'main' or 'project:DIR:ENTRY_POINT' "
                                 "('project::ENTRY_POINT' at the root)")
            # "", "." and "./" all mean the root; one spelling, so the wire format is stable.
            target = str(PurePosixPath(directory)) + (f":{entry}" if colon else "")
        else:
            hint = f"; for a Python file write 'script:{value}'" if value.endswith(".py") else ""
            raise ValueError(f"{value!r} must start with 'example:', 'module:' or 'project:', "
                             f"or be 'script:PATH.py'{hint}")
        return cls(kind, target)

    def default_name(self) -> str:
        """The job's name when the spec gives none."""
        if self.kind == "project":
            raw = PurePosixPath(self.target.partition(":")[0]).name or "project"
        elif self.kind == "script":
            raw = PurePosixPath(self.target).stem
        else:  # the example, or the module's function
            raw = self.target.split(":")[-1]
        # A default the spec did not write must not fail the name's own check.
        return re.sub(r"[^A-Za-z0-9_.-]", "-", raw).lstrip("_.-")[:100] or self.kind


def _type_name(value: Any) -> str:
    return {str: "text", bool: "true/false", int: "a whole number", float: "a number",
            list: "a list", dict: "a mapping", type(None): "nothing"}.get(type(value),
                                                                          type(value).__name__)


def _got(value: Any) -> str:
    if value is None:
        return "nothing"
    # reprlib: an enormous value (a YAML alias bomb, say) is never rendered whole.
    shown = reprlib.repr(value)
    return f"{_type_name(value)} {shown if len(shown) <= 60 else shown[:57] + '...'}"


def _storable(value: str) -> str:
    # PostgreSQL's jsonb (the queue) cannot hold NUL, and exec() cannot pass it in env.
    if "\x00" in value:
        raise ValueError("contains a NUL character, which cannot be stored; remove it")
    return value


def _param(value: Any) -> Any:
    # One message instead of one per member of the union that pydantic would report.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")  # JSON has no inf/nan
    if not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"expected text, a number or true/false, got {_got(value)}")
    return _storable(value) if isinstance(value, str) else value


def _env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise ValueError("not a valid environment variable name (letters, digits and '_', not "
                         "starting with a digit)")
    for pattern, why in _ENV_REFUSED.items():
        if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            shown = f"{pattern} variables" if pattern.endswith("*") else pattern
            prefix = "set by the trainer, so " if pattern in _SET_BY_TRAINER else ""
            raise ValueError(f"{prefix}{shown} may not be set by a job: {why}")
    return name


def _env_value(value: Any) -> Any:
    # YAML reads `LEVEL: 2` as a number; the environment only holds text.
    return str(value) if isinstance(value, (int, float, bool)) else value


Text = Annotated[str, AfterValidator(_storable)]
Param = Annotated[str | int | float | bool, BeforeValidator(_param)]
EnvName = Annotated[str, AfterValidator(_env_name)]
# Constraints come first: after a validator pydantic can no longer check them as text.
EnvValue = Annotated[str, StringConstraints(max_length=MAX_ENV_VALUE), BeforeValidator(_env_value),
                     AfterValidator(_storable)]
# Non-empty text, surrounding blanks removed. MLflow allows any experiment name that fits its
# column (256 characters).
ExperimentName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                  max_length=256), AfterValidator(_storable)]
ModelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256),
                      AfterValidator(_storable)]
EntrypointField = Annotated[
    Entrypoint, PlainValidator(Entrypoint.parse), PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^(example|module|script|project):",
                    "examples": ["example:digits-cnn", "module:mypackage.train:main",
                                 "script:src/train.py", "project:.", "project:cnn:evaluate"]})]


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} must be 1-100 letters, digits, '_', '.', '-', starting with "
                         "a letter or digit")
    return name


def _name_schema(schema: dict[str, Any]) -> None:
    # The default is worked out from the entrypoint, so "job" would mislead in the schema.
    schema.pop("default", None)
    schema["pattern"] = _NAME.pattern


class Resources(BaseModel):
    """What the job needs from the worker."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    gpus: int = Field(0, ge=0, le=16, description="GPUs the job needs (0: CPU only).")
    timeout_seconds: int = Field(
        3600, ge=1, le=MAX_TIMEOUT_S,
        description="The job is stopped, and marked failed, after this many seconds.")


class JobSpec(BaseModel):
    """A training job: what to run, where its results go, and what it needs."""

    # strict: YAML's `yes` is not a GPU count and "2" is not a number; unknown fields are typos.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Annotated[str, AfterValidator(_check_name)] = Field(
        "job", description="The job's name in listings and the MLflow run's name; 1-100 letters, "
        "digits, '_', '.', '-'. Defaults to the entrypoint's name: the example, the function, "
        "the script's file name without .py, or the project's directory ('project' at the root).",
        json_schema_extra=_name_schema)
    experiment: ExperimentName = Field(
        description="The MLflow experiment the run goes to, created if missing; any text.")
    entrypoint: EntrypointField = Field(
        description="What to run: 'example:NAME' (a built-in example: " + ", ".join(EXAMPLES)
        + "), 'module:PACKAGE.MODULE:FUNCTION' (called with the params and the TensorBoard "
        "directory), 'script:PATH.py' (a Python file in the uploaded code), or an MLproject in "
        "the uploaded code: 'project:.' (at its root; also 'project:'), 'project:DIR', "
        "'project:DIR:ENTRY_POINT', 'project::ENTRY_POINT' (the root's ENTRY_POINT).")
    params: dict[Text, Param] = Field(
        default_factory=dict, description="Parameters passed to the job and logged to MLflow; "
        "each value is text, a number or true/false.")
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict, description="Extra environment variables for the job's process "
        f"(values up to {MAX_ENV_VALUE} characters; numbers are turned into text). Not for "
        "secrets: the spec is stored and shown to the submitter and the admins. Loader and "
        "interpreter hooks (LD_*, DYLD_*, PYTHON*, PATH, BASH_ENV, NODE_OPTIONS, ...), "
        "certificate and proxy settings, PIP_*, and what the platform sets (MLFLOW_*, "
        "MLSTACK_*, CUDA_VISIBLE_DEVICES, TMPDIR, HOME) are refused.")
    # Inlined, not a "$ref": the schema is embedded in the OpenAPI document, where "#/$defs/..."
    # would be looked up from the document's root.
    resources: Annotated[Resources, WithJsonSchema(Resources.model_json_schema())] = Field(
        default_factory=Resources, description="GPUs and time limit.")
    mixed_precision: bool = Field(
        False, description="Train with Keras' mixed_float16 policy (float16 compute on GPUs); "
        "not applied to script: and project: entrypoints (processes of their own), which set it "
        "themselves.")
    verbose: bool = Field(
        False, description="Keep TensorFlow's start-up messages (CUDA, XLA, oneDNN notices) in "
        "the job's log; when false the trainer turns them down.")
    retries: int = Field(0, ge=0, le=10,
                         description="How often the job is re-run after its worker died mid-job.")
    register_model: ModelName | None = Field(
        None, description="Register the trained model under this name in MLflow's model "
        "registry.")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # An empty field (`params:` in YAML, or null) takes its default, as if left out.
        data = {k: v for k, v in data.items() if v is not None}
        if isinstance(data.get("resources"), dict):
            data["resources"] = {k: v for k, v in data["resources"].items() if v is not None}
        if "name" not in data:
            try:
                data["name"] = Entrypoint.parse(data.get("entrypoint")).default_name()
            except ValueError:
                pass  # the entrypoint's own error is reported; the name stays "job"
        return data

    @property
    def gpus(self) -> int:
        return self.resources.gpus

    @property
    def timeout_s(self) -> int:
        return self.resources.timeout_seconds

    def to_dict(self) -> dict[str, Any]:
        """The wire format (what the queue stores and `validate` reads back)."""
        return self.model_dump(mode="json")

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return cls.model_json_schema()


# Shown for a required field that is missing, instead of pydantic's "Field required".
_MISSING = {
    "entrypoint": "write e.g. 'entrypoint: example:digits-cnn', 'module:mypackage.train:main', "
                  "'script:train.py' or 'project:my-project'",
    "experiment": "name the MLflow experiment the run goes to",
}


def _problem(error: Any) -> str:
    """One pydantic error as "field: what is wrong and what to write"."""
    loc, kind, value, ctx = error["loc"], error["type"], error.get("input"), error.get("ctx", {})
    where = ".".join(str(part) for part in loc if part != "[key]")
    if kind == "value_error":  # raised by the checks above, already worded for people
        return f"{where}: {ctx['error']}"
    if kind == "missing":
        return f"{where}: missing; {_MISSING.get(where, 'add it')}"
    if kind == "extra_forbidden":
        model = Resources if loc[:-1] == ("resources",) else JobSpec
        return f"{where}: unknown field; the fields are {', '.join(sorted(model.model_fields))}"
    if loc and loc[-1] == "[key]":
        return f"{where}: names must be text, got {_got(value)}"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"{where}: expected a whole number, got {_got(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{where}: expected true or false, got {_got(value)}"
    if kind == "string_type":
        return f"{where}: expected text, got {_got(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{where}: expected a mapping, got {_got(value)}"
    if kind in ("string_too_short", "too_short"):
        return f"{where}: expected non-empty text"
    if kind in ("string_too_long", "too_long"):
        return f"{where}: {len(value)} characters is too long; at most {ctx['max_length']}"
    if kind == "greater_than_equal":
        return f"{where}: {value} is out of range; write at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"{where}: {value} is out of range; write at most {ctx['le']}"
    return f"{where}: {error['msg']}"  # a case not worded above: pydantic's own text


def validate(data: Any) -> JobSpec:
    """Check a parsed spec; raise SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError([f"the spec must be a mapping of fields, got {_type_name(data)}"])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([_problem(e) for e in exc.errors()]) from None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a spec needs none, and nested aliases let a few
    hundred bytes expand into gigabytes (a "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a job spec; write the value out",
                event.start_mark)
        return super().compose_node(parent, index)


def parse(text: str) -> JobSpec:
    """Parse YAML (a superset of JSON) and validate it."""
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError([f"not valid YAML or JSON{where}: {getattr(exc, 'problem', exc)}"])
    return validate(data)


def dumps(spec: JobSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)
