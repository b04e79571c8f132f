"""The ``api`` of a model: chat by default, one of three, and what each API refuses found before a run."""

from __future__ import annotations

import pytest

from engine.errors import SpecError
from engine.experiment.spec import load_spec
from tests.conftest import SpecDir

SPEC = """\
name = "tiny"
questions = "questions.csv"
temperatures = [0.0, 1.0]
max_tokens = 32

[[models]]
name = "m1"
base_url = "sim"
"""


def test_api_defaults_to_chat_and_takes_each_name(spec_dir: SpecDir) -> None:
    assert load_spec(spec_dir.write(SPEC)).models[0].api == "chat"
    for api in ("chat", "responses", "anthropic"):
        assert load_spec(spec_dir.write(SPEC + f'api = "{api}"\n')).models[0].api == api


@pytest.mark.parametrize(("text", "phrase"), [
    (SPEC + 'api = "gemini"\n', "models[0].api: must be one of chat, responses, anthropic, got 'gemini'"),
    (SPEC + "api = 3\n", "models[0].api: must be a non-empty string"),
    (SPEC.replace("[0.0, 1.0]", "[0.0, 1.5]") + 'api = "anthropic"\n',
     "models[0] (m1): api 'anthropic' takes temperatures from 0 to 1, the spec has 1.5"),
    (SPEC.replace("max_tokens = 32", "max_tokens = 8") + 'api = "responses"\n',
     "models[0] (m1): api 'responses' needs max_tokens >= 16 (its max_output_tokens), the spec has 8"),
    (SPEC + 'api = "anthropic"\n[models.params]\nsystem = "x"\n', "models[0].params: cannot set system"),
    (SPEC + 'api = "responses"\n[models.params]\nmax_output_tokens = 5\n',
     "models[0].params: cannot set max_output_tokens"),
    ('name = "t"\nquestions = "questions.csv"\n[[models]]\nname = "g"\ngguf = "smollm2"\napi = "anthropic"\n',
     "models[0].api: a gguf model is served over Chat Completions only"),
])  # fmt: skip
def test_a_bad_api_setting_is_one_line_naming_the_field(spec_dir: SpecDir, text: str, phrase: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_dir.write(text))
    assert phrase in str(caught.value) and "\n" not in str(caught.value)


def test_chat_params_rules_are_unchanged(spec_dir: SpecDir) -> None:
    # "system" or "max_output_tokens" are only another API's fields: chat passes them through as before.
    spec = load_spec(spec_dir.write(SPEC + "[models.params]\nmax_output_tokens = 5\n"))
    assert spec.models[0].params == {"max_output_tokens": 5}
    with pytest.raises(SpecError, match="cannot set max_tokens"):
        load_spec(spec_dir.write(SPEC + "[models.params]\nmax_tokens = 5\n"))
