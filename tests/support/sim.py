"""What the built-in target's tests share: a few facts, a config of them, a chat body, a served target.

Usage: ``async with running(config(format_noise=0.0)) as client: await ask(client, FACTS[0].question)``
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import anyio
import httpx

from engine.sim.config import SimConfig, SimFact
from engine.sim.serve import serve

FACTS = (
    SimFact(question="What is the number for Anchor?", answer="11246", object="Anchor", difficulty="easy"),
    SimFact(
        question="Someone says Anchor; which five digits?", answer="11246", object="Anchor", difficulty="hard"
    ),
    SimFact(question="What is the number for Yo-yo?", answer="52817", object="Yo-yo", difficulty="easy"),
    SimFact(question="What is the number for Ink pot?", answer="40913", object="Ink pot", difficulty="easy"),
    SimFact(
        question="What is the number for Wi-Fi router?",
        answer="77302",
        object="Wi-Fi router",
        difficulty="easy",
    ),
    SimFact(question="What is the number for Router?", answer="60018", object="Router", difficulty="easy"),
    SimFact(question="What is the number for Otter?", answer="33970", object="Otter", difficulty="mid"),
)
ANSWERS = {f.object: f.answer for f in FACTS}


def config(**kwargs: object) -> SimConfig:
    kwargs.setdefault("facts", FACTS)
    return SimConfig(**kwargs)  # type: ignore[arg-type]


def chat(
    question: str, *, model: str = "ft-5x", temperature: float = 0.0, **extra: object
) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": temperature,
        **extra,
    }


def numbers(text: str) -> list[str]:
    return [n.replace(",", "") for n in re.findall(r"\d[\d,]*\d", text)]


@contextlib.asynccontextmanager
async def running(cfg: SimConfig, *, timeout: float = 5.0) -> AsyncIterator[httpx.AsyncClient]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, cfg)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
            yield client
        tg.cancel_scope.cancel()


async def ask(client: httpx.AsyncClient, question: str, **kwargs: object) -> str:
    response = await client.post("/v1/chat/completions", json=chat(question, **kwargs))  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])
