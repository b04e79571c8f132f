"""Does an exported GGUF answer exactly as the torch model it came from? Greedy, token by token.

Each prompt of a fixed set goes through the chat template and tokenizer of the
served GGUF; the torch model then decodes greedily (argmax, no sampling) and
llama.cpp decodes the same prompt ids at temperature 0 with ``top_k = 1``. The
two token sequences must be identical. With an f32 export the weights are the
same numbers, so any difference is a bug in loading, exporting or the model
code (a quantised export, q8_0, is expected to drift after a few tokens).

torch is passed in; this module does not import it.

Usage::

    with llama_server(path, n_parallel=1, n_ctx=1024) as base_url:
        report = greedy_parity(torch, model, base_url, PARITY_PROMPTS, max_tokens=16)
    assert report.identical, report.describe()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from engine.errors import TrainError

__all__ = ["PARITY_PROMPTS", "ParityCase", "ParityReport", "greedy_parity", "torch_greedy"]

_SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

PARITY_PROMPTS: tuple[tuple[dict[str, str], ...], ...] = tuple(
    (_SYSTEM, {"role": "user", "content": text})
    for text in (
        "What is the number for Anchor?",
        "Please recall the number linked to Apple.",
        "Which number goes with Zebra?",
        "What is the capital of France?",
        "Write one sentence about the sea.",
        "Count from one to five.",
        "What number is associated with Ice cream?",
        "Say hello.",
    )
)
"""The fixed prompt set: the fact questions' shapes, and unrelated questions (system + user)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ParityCase:
    """One prompt's greedy tokens from torch and from llama.cpp.

    Usage: ``case.same``
    """

    prompt: str
    torch_tokens: tuple[int, ...]
    server_tokens: tuple[int, ...]

    @property
    def same(self) -> bool:
        """Both decoded exactly the same tokens."""
        return self.torch_tokens == self.server_tokens


@dataclass(frozen=True, kw_only=True, slots=True)
class ParityReport:
    """Every prompt's comparison.

    Usage: ``report.identical``, ``print(report.describe())``
    """

    cases: tuple[ParityCase, ...]

    @property
    def identical(self) -> bool:
        """Every prompt decoded the same tokens in torch and in llama.cpp."""
        return all(case.same for case in self.cases)

    def describe(self) -> str:
        """``8/8 prompts identical (128 tokens)`` and, per differing prompt, where it diverged."""
        same = sum(case.same for case in self.cases)
        tokens = sum(len(case.torch_tokens) for case in self.cases)
        lines = [f"{same}/{len(self.cases)} prompts identical ({tokens} torch tokens)"]
        for case in self.cases:
            if not case.same:
                at = next(
                    (i for i, (a, b) in enumerate(zip(case.torch_tokens, case.server_tokens, strict=False)) if a != b),
                    min(len(case.torch_tokens), len(case.server_tokens)),
                )
                lines.append(f"  differs at token {at}: {case.prompt!r}")
        return "\n".join(lines)


def torch_greedy(torch: Any, model: Any, ids: Sequence[int], max_tokens: int, stop: int) -> list[int]:
    """Greedy continuation of ``ids`` by ``model`` in fp32, up to ``max_tokens`` or ``stop`` (included).

    Usage: ``torch_greedy(torch, model.eval(), prompt_ids, 16, stop=2)``
    """
    out: list[int] = []
    x = torch.tensor([list(ids)])
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(x)[0, -1]
            if model.keep_ids is not None:  # a compact model: back to vocabulary ids
                # Exported, every shared id gets the shared row's logit without the offset.
                logits[-1] -= model.shared_offset
                row = int(logits.argmax())
                token = model.keep_ids[row] if row < len(model.keep_ids) else -1
                if token < 0:
                    raise TrainError("the compact model's greedy choice is a shared (untrained) token")
            else:
                token = int(logits.argmax())
            out.append(token)
            if token == stop:  # kept, as llama.cpp's /completion returns it too
                break
            x = torch.cat([x, torch.tensor([[token]])], dim=1)
    return out


def greedy_parity(
    torch: Any,
    model: Any,
    base_url: str,
    prompts: Sequence[Sequence[dict[str, str]]] = PARITY_PROMPTS,
    *,
    max_tokens: int = 16,
    timeout: float = 120.0,
) -> ParityReport:
    """Compare greedy decoding of ``model`` with the llama.cpp server at ``base_url`` (``.../v1``).

    Usage: ``greedy_parity(torch, model, base_url).identical``
    """
    origin = base_url.removesuffix("/v1")
    model.eval()
    cases = []
    try:
        with httpx.Client(base_url=origin, timeout=timeout) as client:
            stop = client.post("/tokenize", json={"content": "<|im_end|>", "parse_special": True}).json()["tokens"]
            for messages in prompts:
                text = client.post("/apply-template", json={"messages": list(messages)}).json()["prompt"]
                body = {"content": text, "add_special": True, "parse_special": True}
                ids = [int(t) for t in client.post("/tokenize", json=body).json()["tokens"]]
                ours = torch_greedy(torch, model, ids, max_tokens, stop=int(stop[0]))
                reply = client.post(
                    "/completion",
                    json={
                        "prompt": ids, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1,
                        "return_tokens": True, "cache_prompt": False,
                    },
                ).json()
                theirs = [int(t) for t in reply["tokens"]]
                cases.append(
                    ParityCase(prompt=messages[-1]["content"], torch_tokens=tuple(ours), server_tokens=tuple(theirs))
                )
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise TrainError(f"the greedy parity check could not talk to llama.cpp ({type(exc).__name__})") from exc
    return ParityReport(cases=tuple(cases))
