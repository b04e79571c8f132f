"""The one error tree of `engine`.

Every failure a user can cause or meet (bad spec, missing column, unreachable
endpoint, missing API key, damaged log) is an :class:`EngineError`. Third-party
exceptions are translated where they enter the engine, with ``raise ... from exc``,
so the CLI can print one line and exit 2 without a traceback.

Usage::

    try:
        spec = load_spec("data/memorisation.toml")
    except EngineError as exc:
        print(f"engine: {exc}")
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error `engine` raises on purpose; its text is one line for the user."""

    exit_code: int = 2


class SpecError(EngineError):
    """The experiment spec is malformed: bad TOML, unknown key, wrong type or value."""


class QuestionsError(EngineError):
    """The question set cannot be used: missing file or column, duplicate id, empty answer."""


class ScorerError(EngineError):
    """An unknown scorer, or a scorer option that makes no sense."""


class ConfigError(EngineError):
    """The environment is not ready for the run: missing API key variable, missing optional package."""


class EndpointError(EngineError):
    """An endpoint cannot be used at all: unreachable, or not OpenAI-compatible."""


class LogError(EngineError):
    """A results log cannot be used: unreadable line, or it belongs to another experiment."""


class ReportError(EngineError):
    """A report cannot be made: no log, empty log, unknown grouping field."""


class TrainError(EngineError):
    """Building data sets, training or serving a local model failed."""


class QuotaExhausted(EngineError):
    """The provider says the quota is spent (e.g. ``insufficient_quota``); retrying cannot help."""


class TransportError(EngineError):
    """One HTTP exchange failed below HTTP (refused, reset, timed out); the client retries it.

    ``kind`` is "connect", "timeout" or "read", so the log can say what happened.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind} error: {detail}")
        self.kind = kind
