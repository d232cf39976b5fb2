import pytest

from mlstack_trainer.spec import SpecError, parse

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
