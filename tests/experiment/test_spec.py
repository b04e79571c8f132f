"""The spec loader: defaults for what is left out, and one error naming file and field for every mistake."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.experiment.settings import QuotaSpec
from engine.experiment.spec import ModelSpec, Spec, load_spec
from engine.sim.config import Faults, SimConfig
from tests.conftest import BASE_SPEC, REPO, SpecDir

MINIMAL = """\
name = "minimal"
questions = "questions.csv"

[[models]]
name = "m1"
base_url = "https://api.example.com/v1/"
"""


def test_minimal_spec_gets_every_default(spec_dir: SpecDir) -> None:
    path = spec_dir.write(MINIMAL)
    spec = load_spec(path)
    defaults = Spec(path=path, name="x", questions=Path("q"), models=())
    assert spec.name == "minimal"
    assert spec.questions == spec_dir.root / "questions.csv"  # relative to the spec, not the cwd
    for f in dataclasses.fields(Spec):
        if f.name not in ("path", "name", "questions", "models"):
            assert getattr(spec, f.name) == getattr(defaults, f.name), f.name
    assert spec.temperatures == (0.0,) and spec.repeats == 1 and spec.scorer == "number"
    (model,) = spec.models
    assert model == ModelSpec(name="m1", model="m1", base_url="https://api.example.com/v1")  # trailing / cut
    assert spec.sim == SimConfig()


def test_project_specs_load() -> None:
    spec = load_spec(REPO / "data" / "memorisation.toml")
    assert [m.name for m in spec.models] == ["ft-5x", "ft-10x", "ft-25x", "ft-50x"]
    assert spec.temperatures == (0.0, 0.5, 1.0) and spec.repeats == 2
    assert spec.sim.accuracy["ft-5x"]["hard"] == pytest.approx(0.703)
    replication = load_spec(REPO / "data" / "replication.toml")
    assert all(m.gguf and m.base_url is None for m in replication.models)


def test_full_spec_values_are_kept(spec_dir: SpecDir) -> None:
    text = BASE_SPEC.replace(
        'scorer = "number"',
        'scorer = "regex"\nscorer_pattern = "(\\\\d+)"\nsystem = "Be brief."\nprompt = "Q: {question}"\n'
        "timeout_s = 2.5\nmax_attempts = 3\nmax_retry_wait_s = 0\nfsync = 100",
    ) + '[models.params]\ntop_p = 0.9\n\n[sim]\nlatency_ms = 5\nseed = 7\n[sim.faults]\nerror_500 = 0.1\nslow_s = 2\n'
    spec = load_spec(spec_dir.write(text))
    assert spec.scorer == "regex" and spec.scorer_pattern == "(\\d+)"
    assert spec.system == "Be brief." and spec.prompt == "Q: {question}"
    assert (spec.timeout_s, spec.max_attempts, spec.max_retry_wait_s, spec.fsync) == (2.5, 3, 0, 100)
    assert spec.models[1].params == {"top_p": 0.9} and spec.models[0].params == {}
    assert spec.sim.latency_ms == 5 and spec.sim.seed == 7
    assert spec.sim.faults == Faults(error_500=0.1, slow_s=2)
    assert spec.temperatures == (0.0, 1.0) and all(isinstance(t, float) for t in spec.temperatures)


def test_quota_tables_are_kept_and_their_models_name_them(spec_dir: SpecDir) -> None:
    text = _in_pool("[quotas.pool]\nrpm = 600\ntpm = 90000\nconcurrency = 8\n", 'base_url = "sim"\nquota = "pool"')
    spec = load_spec(spec_dir.write(text))
    assert spec.quotas == {"pool": QuotaSpec(rpm=600, tpm=90_000, concurrency=8)}
    assert [m.quota for m in spec.models] == ["pool", "pool"]
    spec = load_spec(spec_dir.write(_in_pool("[quotas.pool]\n", 'base_url = "sim"\nquota = "pool"')))
    assert spec.quotas == {"pool": QuotaSpec()}  # no rates: the shared limiter learns them from 429s
    assert QuotaSpec().concurrency == ModelSpec(name="m", model="m").concurrency  # one default for both


def test_labels_of_one_model_id_that_agree_share_it(spec_dir: SpecDir) -> None:
    text = _edit('name = "m2"\nbase_url = "sim"', 'name = "m2"\nmodel = "m1"\nbase_url = "sim"') + "[models.params]\nseed = 1\n"
    spec = load_spec(spec_dir.write(text))
    assert [m.model for m in spec.models] == ["m1", "m1"]


def test_spec_is_frozen(spec_dir: SpecDir) -> None:
    spec = load_spec(spec_dir.write())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.repeats = 3  # type: ignore[misc]


def _edit(old: str, new: str) -> str:
    assert old in BASE_SPEC
    return BASE_SPEC.replace(old, new, 1)


POOL = "[quotas.pool]\nrpm = 60\n"


def _in_pool(tables: str, m2: str = 'base_url = "sim"\nconcurrency = 4') -> str:
    """BASE_SPEC with m1 in quota "pool", m2 given ``m2``'s lines, and ``tables`` appended."""
    text = _edit('name = "m1"\nbase_url = "sim"\nconcurrency = 4', 'name = "m1"\nbase_url = "sim"\nquota = "pool"')
    return text.replace('name = "m2"\nbase_url = "sim"\nconcurrency = 4', f'name = "m2"\n{m2}') + tables


# (id, spec text, the field the message must name, another phrase it must contain)
BAD_SPECS = [
    ("unknown top-level key", _edit("repeats = 1", "repeats = 1\ntemprature = 0.5"), "temprature", "unknown key"),
    ("unknown key in models", _edit('name = "m2"', 'name = "m2"\nbase_ur = "sim"'), "models[1]", "'base_ur'"),
    ("unknown key in sim", BASE_SPEC + "[sim]\nlatency = 5\n", "sim", "unknown key 'latency'"),
    ("unknown sim fault", BASE_SPEC + "[sim.faults]\nerror_501 = 0.1\n", "sim.faults", "'error_501'"),
    ("fault rates above 1", BASE_SPEC + "[sim.faults]\nerror_500 = 0.6\ndrop = 0.6\n", "sim.faults", "more than 1"),
    ("sim accuracy above 1", BASE_SPEC + "[sim.accuracy.m1]\neasy = 1.5\n", "sim.accuracy.m1.easy", "<= 1"),
    ("name not a string", _edit('name = "tiny"', "name = 5"), "name", "non-empty string"),
    ("name is a path", _edit('name = "tiny"', 'name = "../elsewhere"'), "name", "plain directory name"),
    ("missing name", _edit('name = "tiny"\n', ""), "name", "required"),
    ("missing questions", _edit('questions = "questions.csv"\n', ""), "questions", "required"),
    ("repeats a string", _edit("repeats = 1", 'repeats = "two"'), "repeats", "integer"),
    ("repeats zero", _edit("repeats = 1", "repeats = 0"), "repeats", ">= 1"),
    ("repeats negative", _edit("repeats = 1", "repeats = -2"), "repeats", ">= 1"),
    ("repeats a float", _edit("repeats = 1", "repeats = 1.5"), "repeats", "integer"),
    ("max_tokens a bool", _edit("max_tokens = 16", "max_tokens = true"), "max_tokens", "integer"),
    ("temperatures not a list", _edit("temperatures = [0.0, 1.0]", "temperatures = 0.5"), "temperatures", "list"),
    ("temperatures empty", _edit("temperatures = [0.0, 1.0]", "temperatures = []"), "temperatures", "non-empty"),
    ("temperature above 2", _edit("temperatures = [0.0, 1.0]", "temperatures = [0.0, 2.5]"), "temperatures[1]", "<= 2"),
    ("temperature negative", _edit("temperatures = [0.0, 1.0]", "temperatures = [-0.1]"), "temperatures[0]", ">= 0"),
    ("temperature nan", _edit("temperatures = [0.0, 1.0]", "temperatures = [nan]"), "temperatures[0]", "nan"),
    ("temperature a string", _edit("temperatures = [0.0, 1.0]", 'temperatures = ["hot"]'), "temperatures[0]", "number"),
    ("temperatures repeated", _edit("temperatures = [0.0, 1.0]", "temperatures = [0, 0.0]"), "temperatures", "duplicates"),
    ("timeout zero", BASE_SPEC.replace("max_tokens = 16", "max_tokens = 16\ntimeout_s = 0"), "timeout_s", "> 0"),
    ("no models", BASE_SPEC.split("[[models]]")[0], "models", "at least one"),
    ("empty models", BASE_SPEC.split("[[models]]")[0] + "models = []\n", "models", "at least one"),
    ("models not tables", BASE_SPEC.split("[[models]]")[0] + 'models = ["m1"]\n', "models[0]", "table"),
    ("duplicate model names", _edit('name = "m2"', 'name = "m1"'), "models", "duplicate model name 'm1'"),
    ("model names differing by case", _edit('name = "m2"', 'name = "M1"'), "models", "model names 'm1' and 'M1' differ only by case"),
    ("model name with a trailing space", _edit('name = "m2"', 'name = "m1 "'), "models[1].name", "leading or trailing whitespace: 'm1 '"),
    ("model name with a leading space", _edit('name = "m1"', 'name = " m1"'), "models[0].name", "leading or trailing whitespace: ' m1'"),
    ("model id with a trailing tab", _edit('name = "m2"', 'name = "m2"\nmodel = "gpt\t"'), "models[1].model", "whitespace"),
    ("model without name", _edit('name = "m2"\n', ""), "models[1].name", "required"),
    ("base_url and gguf", _edit('name = "m2"', 'name = "m2"\ngguf = "x.gguf"'), "models[1] (m2)", "exactly one"),
    ("neither base_url nor gguf", _edit('name = "m2"\nbase_url = "sim"', 'name = "m2"'), "models[1] (m2)", "exactly one"),
    ("base_url not http", _edit('name = "m2"\nbase_url = "sim"', 'name = "m2"\nbase_url = "ftp://x"'), "models[1].base_url", "http"),
    ("concurrency zero", _edit("concurrency = 4", "concurrency = 0"), "models[0].concurrency", ">= 1"),
    ("rpm negative", _edit("concurrency = 4", "concurrency = 4\nrpm = -5"), "models[0].rpm", "> 0"),
    ("params sets temperature", BASE_SPEC + "[models.params]\ntemperature = 1\n", "models[1].params", "temperature"),
    ("params not a table", _edit("concurrency = 4", "concurrency = 4\nparams = 3"), "models[0].params", "table"),
    ("bad fsync word", _edit("max_tokens = 16", 'max_tokens = 16\nfsync = "sometimes"'), "fsync", "'sometimes'"),
    ("fsync zero", _edit("max_tokens = 16", "max_tokens = 16\nfsync = 0"), "fsync", "positive"),
    ("fsync a bool", _edit("max_tokens = 16", "max_tokens = 16\nfsync = true"), "fsync", "True"),
    ("unknown scorer", _edit('scorer = "number"', 'scorer = "fuzzy"'), "scorer", "unknown scorer 'fuzzy'"),
    ("regex scorer without pattern", _edit('scorer = "number"', 'scorer = "regex"'), "scorer_pattern", "needs a pattern"),
    ("invalid regex", _edit('scorer = "number"', 'scorer = "regex"\nscorer_pattern = "(unclosed"'), "scorer_pattern", "valid regex"),
    ("pattern for number scorer", _edit('scorer = "number"', 'scorer = "number"\nscorer_pattern = "x"'), "scorer_pattern", "only 'regex'"),
    ("prompt without question", _edit("max_tokens = 16", 'max_tokens = 16\nprompt = "Answer now."'), "prompt", "{question}"),
    ("prompt with escaped question", _edit("max_tokens = 16", 'max_tokens = 16\nprompt = "{{question}}"'), "prompt", "{question}"),
    ("prompt with bad braces", _edit("max_tokens = 16", 'max_tokens = 16\nprompt = "{question} {"'), "prompt", "placeholder"),
    ("sim not a table", BASE_SPEC.split("[[models]]")[0] + "sim = 3\n" + BASE_SPEC[BASE_SPEC.index("[[models]]"):], "sim", "table"),
    ("replication not a table", _edit("max_tokens = 16", "max_tokens = 16\nreplication = 1"), "replication", "table"),
    # Shared quotas: [quotas.NAME] tables, named by models' quota = "NAME".
    ("quota with no tables", _in_pool(""), "models[0].quota", "unknown quota 'pool' (the spec has no [quotas] tables)"),
    ("quota unknown", _in_pool("[quotas.team]\nrpm = 6\n"), "models[0].quota", "unknown quota 'pool' (defined: team)"),
    ("quota not a string", _edit("concurrency = 4", "quota = 5"), "models[0].quota", "non-empty string"),
    ("quota and own limits", _edit("concurrency = 4", 'concurrency = 4\nrpm = 60\nquota = "pool"') + POOL,
     "models[0] (m1)", "has its own concurrency, rpm and also quota = 'pool'; a model in a shared quota takes its limits from [quotas.pool]"),
    ("quota table unused", BASE_SPEC + POOL, "quotas.pool", 'no model names it (add quota = "pool" to its models)'),
    ("quota across endpoints", _in_pool(POOL, 'base_url = "https://api.example.test/v1"\nquota = "pool"'),
     "quotas.pool", "models 'm1' (sim, no key) and 'm2' (https://api.example.test/v1, no key) are on different endpoints"),
    ("quota across keys", _in_pool(POOL, 'base_url = "sim"\napi_key_env = "OTHER_KEY"\nquota = "pool"'),
     "quotas.pool", "(sim, key $OTHER_KEY) are on different endpoints"),
    ("quota table unknown key", _in_pool("[quotas.pool]\nrpn = 6\n"), "quotas.pool", "unknown key 'rpn'"),
    ("quota table rpm zero", _in_pool("[quotas.pool]\nrpm = 0\n"), "quotas.pool.rpm", "> 0"),
    ("quota table concurrency zero", _in_pool("[quotas.pool]\nconcurrency = 0\n"), "quotas.pool.concurrency", ">= 1"),
    ("quotas not tables", _edit("max_tokens = 16", "max_tokens = 16\nquotas = 3"), "quotas", "[quotas.NAME] tables"),
    ("one model id, two quotas", _edit('name = "m2"\nbase_url = "sim"\nconcurrency = 4', 'name = "m2"\nmodel = "m1"\nbase_url = "sim"\nconcurrency = 8'),
     "models", "'m1' and 'm2' are one model ('m1') at one endpoint, which a provider counts as one quota, but set concurrency = 4 and concurrency = 8"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "field", "phrase"), [row[1:] for row in BAD_SPECS], ids=[row[0] for row in BAD_SPECS])
def test_bad_spec_names_file_and_field(spec_dir: SpecDir, text: str, field: str, phrase: str) -> None:
    path = spec_dir.write(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert f": {field}" in message, message
    assert phrase in message, message
    assert "\n" not in message


def test_malformed_toml_names_file_and_position(spec_dir: SpecDir) -> None:
    path = spec_dir.write(BASE_SPEC + "repeats 3\n")
    with pytest.raises(SpecError, match=r"malformed TOML.*line 17") as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, Exception)  # translated with `from`, the cause kept for debugging


@pytest.mark.parametrize(
    ("setup", "phrase"),
    [
        (lambda d: d / "nope.toml", "spec file not found"),
        (lambda d: d, "is a directory"),
        (lambda d: (d / "latin1.toml", (d / "latin1.toml").write_bytes(b'name = "caf\xe9"\n'))[0], "not UTF-8"),
    ],
    ids=["missing", "directory", "not utf-8"],
)
def test_unreadable_spec_file(tmp_path: Path, setup, phrase: str) -> None:  # type: ignore[no-untyped-def]
    path = setup(tmp_path)
    with pytest.raises(SpecError, match=phrase) as info:
        load_spec(path)
    assert str(path) in str(info.value)
