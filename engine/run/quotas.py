"""Who shares which limiter: each model its own, as providers count quotas, unless the spec pools them.

Providers (OpenAI among them) count rate limits per account and per model: four models
each allowed 6,000 requests/min may send 24,000 a minute between them. So every model id
at an endpoint (URL or GGUF file, and API key variable) gets its own limiter: its own
``rpm``, ``tpm`` and ``concurrency``, its own pause after a 429. Labels of one model id at
one endpoint (two sampling setups of one model) are one quota to the provider and share
one limiter (the spec checks they agree about it). Models a provider pools under one quota
name a ``[quotas.NAME]`` table and share one limiter paced by that table.

The connection pool stays one per endpoint, sized to the sum of its limiters' concurrency,
so every limiter can fill its own window at once.

This is the one rule: the run builds its limiters from ``quota_groups`` and the plan
times the grid by the same groups.

Usage::

    for group in quota_groups(spec):
        limiter = EndpointLimiter(group.limits)   # paces group.models together
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.endpoint.limits import LimitConfig
from engine.experiment.spec import ModelSpec, Spec
from engine.sim.config import SIM_URL

Endpoint = tuple[str, str | None]  # ModelSpec.endpoint: (URL, "sim" or "gguf:FILE"; API key variable)


@dataclass(frozen=True, kw_only=True, slots=True)
class QuotaGroup:
    """Models paced by one limiter, and that limiter's settings.

    Usage: ``EndpointLimiter(group.limits)``; ``group.label`` names it to the user.
    """

    name: str  # the [quotas] table's name, or the model id
    shared: bool  # True for a [quotas.NAME] table
    endpoint: Endpoint
    models: tuple[ModelSpec, ...]
    limits: LimitConfig

    @property
    def label(self) -> str:
        """Who is paced and where: ``m1 at sim (built-in target)``, ``quota 'pool' shared by a, b at https://...``."""
        labels = ", ".join(m.name for m in self.models)
        if self.shared:
            who = f"quota {self.name!r} shared by {labels}"
        elif len(self.models) > 1:
            who = f"model {self.name!r} (as {labels})"
        else:
            who = labels
        return f"{who} at {endpoint_label(self.endpoint)}"


def endpoint_label(endpoint: Endpoint) -> str:
    """How an endpoint is named to the user (the key's variable name, never the key).

    Usage: ``endpoint_label(("sim", None))  # 'sim (built-in target)'``
    """
    where, key_env = endpoint
    if where == SIM_URL:
        where = "sim (built-in target)"
    elif where.startswith("gguf:"):
        where = f"local {where[len('gguf:'):]}"
    return f"{where} (key ${key_env})" if key_env else where


def quota_groups(spec: Spec) -> tuple[QuotaGroup, ...]:
    """The spec's limiters, in the order their first model appears.

    Usage: ``[g.label for g in quota_groups(spec)]``
    """
    members: dict[tuple[str, ...], list[ModelSpec]] = {}
    for model in spec.models:
        where, key_env = model.endpoint
        key = ("quota", model.quota) if model.quota is not None else ("model", where, key_env or "", model.model)
        members.setdefault(key, []).append(model)
    groups = []
    for (kind, *rest), models in members.items():
        first = models[0]
        if kind == "quota":
            table = spec.quotas[rest[0]]
            rpm, tpm, concurrency = table.rpm, table.tpm, table.concurrency
        else:
            # The spec checked that labels of one model id at one endpoint agree on these.
            rpm, tpm, concurrency = first.rpm, first.tpm, first.concurrency
        groups.append(QuotaGroup(
            name=rest[0] if kind == "quota" else first.model, shared=kind == "quota", endpoint=first.endpoint,
            models=tuple(models),
            limits=LimitConfig(rpm=rpm, tpm=tpm, concurrency=concurrency, max_pause_s=spec.max_retry_wait_s),
        ))
    return tuple(groups)


def by_endpoint(groups: Sequence[QuotaGroup]) -> dict[Endpoint, list[QuotaGroup]]:
    """Limiters grouped by the endpoint whose connection pool they share.

    Usage: ``for endpoint, limiters in by_endpoint(quota_groups(spec)).items(): ...``
    """
    out: dict[Endpoint, list[QuotaGroup]] = {}
    for group in groups:
        out.setdefault(group.endpoint, []).append(group)
    return out


def pool_size(groups: Sequence[QuotaGroup]) -> int:
    """Connections one endpoint needs: the sum of its limiters' concurrency, so each can fill its window.

    Usage: ``default_transport(pool_size(limiters))``
    """
    return sum(g.limits.concurrency for g in groups)
