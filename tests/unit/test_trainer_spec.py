import json

import pytest

from mlstack_trainer.spec import MAX_TIMEOUT_S, JobSpec, SpecError, dumps, parse, validate

GOOD = """
name: digits-baseline
experiment: digits
entrypoint: example:digits-cnn
params: {epochs: 5, learning_rate: 0.001}
env: {TF_CPP_MIN_LOG_LEVEL: 2}
resources: {gpus: 1, timeout_seconds: 600}
mixed_precision: true
retries: 2
register_model: digits-classifier
"""


def test_a_complete_spec_is_accepted():
    spec = parse(GOOD)
    assert spec.name == "digits-baseline" and spec.experiment == "digits"
    assert str(spec.entrypoint) == "example:digits-cnn"
    assert spec.params == {"epochs": 5, "learning_rate": 0.001}
    assert spec.env == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    assert (spec.gpus, spec.timeout_s, spec.mixed_precision, spec.retries) == (1, 600, True, 2)
    assert spec.register_model == "digits-classifier"


def test_json_works_and_defaults_fill_in():
    spec = parse('{"experiment": "e", "entrypoint": "module:mypkg.train:main"}')
    assert spec.name == "main" and spec.gpus == 0 and spec.timeout_s == 3600 and spec.retries == 0
    assert parse('{"experiment": "e", "entrypoint": "project:team/cnn"}').name == "cnn"
    project = parse('{"experiment": "e", "entrypoint": "project:team/cnn:evaluate"}')
    assert project.name == "cnn" and project.entrypoint.target == "team/cnn:evaluate"


@pytest.mark.parametrize("text, message", [
    ("experiment: e\nentrypoint: example:digits-cnn\nepochs: 3",
     "epochs: unknown field; the fields are"),
    ("experiment: e", "entrypoint: missing"),
    ("entrypoint: example:digits-cnn", "experiment: missing"),
    ("experiment: e\nentrypoint: example:mnist", "unknown example 'mnist'; the examples are"),
    ("experiment: e\nentrypoint: train.py", "must start with 'example:', 'module:' or 'project:'"),
    ("experiment: e\nentrypoint: module:train", "is not 'module:PACKAGE.MODULE:FUNCTION'"),
    ("experiment: e\nentrypoint: project:../etc", "no '..'"),
    ("experiment: e\nentrypoint: project:cnn:run it", "'run it' is not an MLproject entry point"),
    ("experiment: e\nentrypoint: example:digits-cnn\nresources: {gpus: two}",
     "resources.gpus: expected a whole number, got text 'two'"),
    ("experiment: e\nentrypoint: example:digits-cnn\nresources: {gpu: 1}",
     "resources.gpu: unknown field"),
    ("experiment: e\nentrypoint: example:digits-cnn\nresources: {timeout_seconds: 0}",
     "resources.timeout_seconds: 0 is out of range"),
    ("experiment: e\nentrypoint: example:digits-cnn\nretries: yes",
     "retries: expected a whole number, got true/false"),
    ("experiment: e\nentrypoint: example:digits-cnn\nparams: {layers: [1, 2]}",
     "params.layers: expected text, a number or true/false, got a list"),
    ("experiment: e\nentrypoint: example:digits-cnn\nenv: {MLFLOW_TRACKING_URI: x}",
     "env.MLFLOW_TRACKING_URI: set by the trainer"),
    ("experiment: e\nentrypoint: example:digits-cnn\nmixed_precision: 1",
     "mixed_precision: expected true or false"),
    ("experiment: [e\nentrypoint: x", "not valid YAML or JSON at line"),
    ("- a\n- b", "the spec must be a mapping"),
])
def test_each_mistake_is_named_with_what_to_write(text, message):
    with pytest.raises(SpecError) as info:
        parse(text)
    assert message in str(info.value)


def test_all_mistakes_are_reported_together():
    with pytest.raises(SpecError) as info:
        parse("entrypoint: example:nope\nresources: {gpus: -1}\ncolour: red")
    assert len(info.value.problems) == 4  # colour, entrypoint, experiment, gpus


def test_the_spec_accepts_exactly_the_examples_the_runtime_has():
    from mlstack_trainer import examples, spec
    assert set(spec.EXAMPLES) == set(examples.EXAMPLES)


def spec_with(line: str) -> str:
    return f"experiment: e\n{line}"


@pytest.mark.parametrize("entrypoint, kind, target, name", [
    ("script:train.py", "script", "train.py", "train"),
    ("script:src/models/train_cnn.py", "script", "src/models/train_cnn.py", "train_cnn"),
    ("script:./train.py", "script", "train.py", "train"),
    ("'project:'", "project", ".", "project"),  # YAML needs a trailing ':' quoted
    ("project:.", "project", ".", "project"),
    ("project::evaluate", "project", ".:evaluate", "project"),
    ("project:.:evaluate", "project", ".:evaluate", "project"),
    ("project:team/cnn", "project", "team/cnn", "cnn"),
    ("project:team/cnn/:evaluate", "project", "team/cnn:evaluate", "cnn"),
    ("module:mypkg.train:main", "module", "mypkg.train:main", "main"),
])
def test_entrypoint_kinds_and_their_default_names(entrypoint, kind, target, name):
    spec = parse(spec_with(f"entrypoint: {entrypoint}"))
    assert (spec.entrypoint.kind, spec.entrypoint.target, spec.name) == (kind, target, name)
    assert str(spec.entrypoint) == f"{kind}:{target}"


@pytest.mark.parametrize("entrypoint, message", [
    ("script:/abs/train.py", "must be the relative path of a .py file"),
    ("script:src/../../train.py", "no '..'"),
    ("script:train.sh", "write e.g. 'script:train.py'"),
    ("'script:'", "must be the relative path of a .py file"),
    ("project:/srv/cnn", "no leading '/'"),
    ("project::run it", "'run it' is not an MLproject entry point"),
    ("train.py", "for a Python file write 'script:train.py'"),
])
def test_bad_scripts_and_projects_say_what_to_write(entrypoint, message):
    with pytest.raises(SpecError) as info:
        parse(spec_with(f"entrypoint: {entrypoint}"))
    assert info.value.problems[0].startswith("entrypoint: ") and message in str(info.value)


def test_verbose_defaults_to_false_and_is_part_of_the_wire_format():
    assert parse(spec_with("entrypoint: example:digits-cnn")).verbose is False
    spec = parse(spec_with("entrypoint: example:digits-cnn\nverbose: true"))
    assert spec.verbose is True and spec.to_dict()["verbose"] is True
    with pytest.raises(SpecError, match="verbose: expected true or false"):
        parse(spec_with("entrypoint: example:digits-cnn\nverbose: loud"))


@pytest.mark.parametrize("name", [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES", "PYTHONPATH", "PYTHONSTARTUP",
    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLSTACK_TB_LOGDIR", "PIP_INDEX_URL",
    "BASH_ENV", "ENV", "PATH", "HOME", "SHELL", "IFS", "PS4", "PROMPT_COMMAND", "PERL5LIB",
    "PERL5OPT", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "CUDA_VISIBLE_DEVICES", "TMPDIR", "http_proxy",
    "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "no_proxy",
])
def test_env_may_not_set_hooks_or_what_the_platform_sets(name):
    with pytest.raises(SpecError) as info:
        parse(spec_with(f"entrypoint: example:digits-cnn\nenv: {{{name}: x}}"))
    [problem] = info.value.problems
    assert problem.startswith(f"env.{name}: ") and "may not be set by a job: " in problem


def test_env_allows_ordinary_names_and_refuses_long_values():
    ok = parse(spec_with("entrypoint: example:digits-cnn\n"
                         "env: {KERAS_BACKEND: tensorflow, TF_CPP_MIN_LOG_LEVEL: 2, path: x}"))
    assert ok.env == {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "path": "x"}
    parse(spec_with(f"entrypoint: example:digits-cnn\nenv: {{A: {'x' * 4096}}}"))
    with pytest.raises(SpecError, match="env.A: 4097 characters is too long; at most 4096"):
        parse(spec_with(f"entrypoint: example:digits-cnn\nenv: {{A: {'x' * 4097}}}"))
    with pytest.raises(SpecError, match="env.1X: not a valid environment variable name"):
        parse(spec_with("entrypoint: example:digits-cnn\nenv: {1X: a}"))


def test_experiment_is_any_text_and_register_model_a_bounded_name():
    spec = parse(spec_with("entrypoint: example:digits-cnn").replace(
        "experiment: e", "experiment: 'Team A / digits (2024) — ünïcode'"))
    assert spec.experiment == "Team A / digits (2024) — ünïcode"
    # MLflow stores both names in 256 characters.
    assert validate({"experiment": "x" * 256, "entrypoint": "example:digits-cnn",
                     "register_model": "m" * 256}).register_model == "m" * 256
    with pytest.raises(SpecError) as info:
        validate({"experiment": "x" * 257, "entrypoint": "example:digits-cnn",
                  "register_model": "m" * 257})
    assert info.value.problems == ["experiment: 257 characters is too long; at most 256",
                                   "register_model: 257 characters is too long; at most 256"]
    with pytest.raises(SpecError, match="register_model: expected non-empty text"):
        validate({"experiment": "e", "entrypoint": "example:digits-cnn", "register_model": " "})


@pytest.mark.parametrize("entrypoint", ["example:digits-cnn", "module:mypkg.train:main",
                                        "script:src/train.py", "project:", "project::evaluate",
                                        "project:team/cnn:evaluate"])
def test_the_wire_format_round_trips(entrypoint):
    spec = parse(GOOD.replace("example:digits-cnn", repr(entrypoint)))
    wire = spec.to_dict()
    assert set(wire) == {"name", "experiment", "entrypoint", "params", "env", "resources",
                         "mixed_precision", "verbose", "retries", "register_model"}
    assert wire["resources"] == {"gpus": 1, "timeout_seconds": 600}
    assert validate(wire) == spec and validate(json.loads(dumps(spec))) == spec


def test_the_json_schema_documents_the_wire_format():
    schema = JobSpec.model_json_schema()
    props = schema["properties"]
    assert set(props) == set(parse(GOOD).to_dict()) and set(schema["required"]) == {
        "experiment", "entrypoint"}
    assert schema["additionalProperties"] is False
    assert "$ref" not in json.dumps(schema)  # self-contained: it is embedded in the OpenAPI doc
    resources = props["resources"]["properties"]
    for field in [*props.values(), *resources.values()]:
        assert field.get("description"), field
    assert props["entrypoint"]["type"] == "string"
    assert "not for secrets" in props["env"]["description"].lower()
    assert resources["timeout_seconds"]["maximum"] == MAX_TIMEOUT_S


def test_unknown_fields_list_the_known_ones_including_verbose():
    with pytest.raises(SpecError) as info:
        parse(spec_with("entrypoint: example:digits-cnn\nverbosity: 1"))
    assert info.value.problems == [
        "verbosity: unknown field; the fields are entrypoint, env, experiment, mixed_precision, "
        "name, params, register_model, resources, retries, verbose"]


def test_yaml_aliases_are_refused_so_a_few_bytes_cannot_expand_into_gigabytes():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
        for i in range(8))
    with pytest.raises(SpecError, match="aliases .* are not allowed in a job spec"):
        parse(bomb + "experiment: e\nentrypoint: example:digits-cnn\n")
