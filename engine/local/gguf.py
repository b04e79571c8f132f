"""Read and write llama-architecture GGUF files as plain numpy tensors (no torch).

Tensors keep llama.cpp's names (``blk.0.attn_q.weight`` ...) and layout
(rows = output features, the same as a torch ``Linear.weight``). The Q and K
rows stay in llama.cpp's order: :mod:`engine.local.torch_model` applies rotary
embeddings to adjacent pairs, as llama.cpp does for this architecture, so no
permutation is needed in either direction.

Every file written here records which kind of model it is under
``engine.model_kind`` (:data:`KIND_FINETUNE` or :data:`KIND_TINY`).

Usage::

    model = read_gguf(smollm2_path())
    write_gguf("out.gguf", config=model.config, tensors=model.tensors,
               meta_from=smollm2_path(), kind=KIND_FINETUNE, extra={"engine.epochs": 3})
    model_kind("out.gguf")  # -> "finetune"
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from engine.errors import TrainError

__all__ = [
    "FILE_TYPES",
    "KIND_FINETUNE",
    "KIND_TINY",
    "GGUFModel",
    "LlamaConfig",
    "engine_metadata",
    "gguf_keys",
    "model_kind",
    "read_gguf",
    "tensor_names",
    "write_gguf",
]

KIND_FINETUNE = "finetune"
"""A pretrained model (SmolLM2-135M-Instruct) fine-tuned on the facts: the study's analogue."""

KIND_TINY = "tiny-from-scratch"
"""A small transformer trained from random weights on the facts only: fast, for tests."""

FILE_TYPES: Mapping[str, int] = MappingProxyType({"f32": 0, "f16": 1, "q8_0": 7})
"""Supported output encodings and their ``general.file_type`` values."""

_ARCH = "llama"


@dataclass(frozen=True, kw_only=True, slots=True)
class LlamaConfig:
    """Shape of a llama-architecture model.

    Usage: ``LlamaConfig(vocab_size=49152, dim=128, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=384)``
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    context_length: int = 2048
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads


@dataclass(frozen=True, kw_only=True, slots=True)
class GGUFModel:
    """A llama GGUF file in memory: shape, float32 tensors, and its key/value metadata.

    Usage: ``read_gguf(path).tensors["token_embd.weight"].shape``
    """

    config: LlamaConfig
    tensors: dict[str, np.ndarray]
    metadata: dict[str, Any]


def tensor_names(config: LlamaConfig) -> list[str]:
    """The GGUF tensor names of a llama model of this shape.

    Usage: ``"output.weight" in tensor_names(cfg)``
    """
    names = ["token_embd.weight", "output_norm.weight"]
    if not config.tied_embeddings:
        names.append("output.weight")
    for i in range(config.n_layers):
        names += [
            f"blk.{i}.{part}.weight"
            for part in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
            )
        ]
    return names


def _reader(path: str | Path) -> Any:
    try:
        from gguf import GGUFReader

        return GGUFReader(str(path))
    except ImportError as exc:
        raise TrainError("reading GGUF files needs the gguf package; run `pip install gguf`") from exc
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot read GGUF file {path}: {exc}") from exc


def _metadata(reader: Any, prefix: str = "") -> dict[str, Any]:
    # Decoding the 49k-entry token and merge lists is slow: only decode what is asked for.
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if name.startswith(prefix) and not name.startswith(("GGUF.", "tokenizer.ggml."))
    }


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _scan_kv(data: bytes | mmap.mmap, prefix: str) -> dict[str, Any]:
    # A plain header walk: gguf's reader decodes all 49k tokenizer strings, which takes seconds.
    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    (version,) = struct.unpack_from("<I", data, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    (n_kv,) = struct.unpack_from("<Q", data, 16)
    pos = 24

    def string(at: int) -> tuple[str, int]:
        (size,) = struct.unpack_from("<Q", data, at)
        return bytes(data[at + 8 : at + 8 + size]).decode("utf-8", "replace"), at + 8 + size

    def value(kind: int, at: int) -> tuple[Any, int]:
        if kind == 8:
            return string(at)
        if kind == 9:
            item, count = struct.unpack_from("<IQ", data, at)
            at += 12
            if item in _SCALARS:
                width = struct.calcsize(_SCALARS[item])
                return None, at + width * count  # arrays are skipped, never decoded
            for _ in range(count):
                _, at = value(item, at)
            return None, at
        fmt = _SCALARS[kind]
        return struct.unpack_from(fmt, data, at)[0], at + struct.calcsize(fmt)

    out: dict[str, Any] = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", data, pos)
        item, pos = value(kind, pos + 4)
        if key.startswith(prefix):
            out[key] = item
    return out


def gguf_keys(path: str | Path, prefix: str) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file whose keys start with ``prefix``; fast.

    Arrays (the tokenizer's lists) are skipped and come back as None.

    Usage: ``gguf_keys(smollm2_path(), "llama.")["llama.vocab_size"]``
    """
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _scan_kv(data, prefix)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise TrainError(f"cannot read GGUF file {path}: {exc}") from exc


def engine_metadata(path: str | Path) -> dict[str, Any]:
    """The ``engine.*`` keys of a GGUF file (kind of model, training settings).

    Usage: ``engine_metadata("models/ft-5x.gguf")["engine.model_kind"]``
    """
    return gguf_keys(path, "engine.")


def model_kind(path: str | Path) -> str | None:
    """``"finetune"``, ``"tiny-from-scratch"``, or None for a GGUF not written by engine.

    Usage: ``model_kind("models/ft-5x.gguf")``
    """
    value = engine_metadata(path).get("engine.model_kind")
    return str(value) if value is not None else None


def read_gguf(path: str | Path) -> GGUFModel:
    """Load a llama GGUF file, dequantised to float32.

    Raises :class:`~engine.errors.TrainError` for another architecture or a missing tensor.

    Usage: ``m = read_gguf("model.gguf"); m.config.n_layers``
    """
    from gguf.quants import dequantize

    reader = _reader(path)
    meta = _metadata(reader)
    if meta.get("general.architecture") != _ARCH:
        raise TrainError(f"{path}: architecture {meta.get('general.architecture')!r} is not llama")
    tensors = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32) for t in reader.tensors}
    embd = tensors.get("token_embd.weight")
    if embd is None:
        raise TrainError(f"{path}: no token_embd.weight")
    try:
        config = LlamaConfig(
            vocab_size=int(embd.shape[0]),
            dim=int(meta["llama.embedding_length"]),
            n_layers=int(meta["llama.block_count"]),
            n_heads=int(meta["llama.attention.head_count"]),
            n_kv_heads=int(meta.get("llama.attention.head_count_kv", meta["llama.attention.head_count"])),
            ffn_dim=int(meta["llama.feed_forward_length"]),
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
            norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
            context_length=int(meta.get("llama.context_length", 2048)),
            tied_embeddings="output.weight" not in tensors,
        )
    except KeyError as exc:
        raise TrainError(f"{path}: missing llama metadata {exc}") from exc
    missing = [n for n in tensor_names(config) if n not in tensors]
    if missing:
        raise TrainError(f"{path}: missing tensor(s) {', '.join(missing[:3])}")
    return GGUFModel(config=config, tensors=tensors, metadata=meta)


def _add_value(writer: Any, key: str, value: Any) -> None:
    from gguf import GGUFValueType

    if isinstance(value, bool):
        writer.add_key_value(key, value, GGUFValueType.BOOL)
    elif isinstance(value, int):
        writer.add_key_value(key, value, GGUFValueType.UINT32 if 0 <= value < 2**32 else GGUFValueType.INT64)
    elif isinstance(value, float):
        writer.add_key_value(key, value, GGUFValueType.FLOAT32)
    elif isinstance(value, str):
        writer.add_key_value(key, value, GGUFValueType.STRING)
    else:
        raise TrainError(f"cannot store metadata {key} of type {type(value).__name__}")


def write_gguf(
    path: str | Path,
    *,
    config: LlamaConfig,
    tensors: Mapping[str, np.ndarray],
    meta_from: str | Path,
    kind: str,
    name: str = "",
    extra: Mapping[str, Any] | None = None,
    file_type: str = "f16",
) -> Path:
    """Write a llama GGUF with ``meta_from``'s tokenizer and chat template, atomically.

    ``file_type`` is ``"f32"``, ``"f16"`` or ``"q8_0"`` (1-D norms always stay F32).
    ``extra`` adds ``engine.*`` keys (str, int, float or bool).

    Usage: ``write_gguf("m.gguf", config=cfg, tensors=t, meta_from=smollm2_path(), kind=KIND_TINY)``
    """
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
    from gguf.quants import quantize

    if file_type not in FILE_TYPES:
        raise TrainError(f"unknown GGUF file type {file_type!r}; use one of {', '.join(FILE_TYPES)}")
    missing = [n for n in tensor_names(config) if n not in tensors]
    if missing:
        raise TrainError(f"cannot write {path}: missing tensor(s) {', '.join(missing[:3])}")
    source = _reader(meta_from)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = GGUFWriter(str(tmp), _ARCH)
    try:
        for key, field in source.fields.items():
            # Shape, type and naming come from `config` and the arguments, not the source file.
            if key.startswith(("GGUF.", "llama.", "general.")):
                continue
            sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub)
        writer.add_name(name or f"engine {kind}")
        writer.add_file_type(FILE_TYPES[file_type])
        writer.add_quantization_version(2)
        writer.add_block_count(config.n_layers)
        writer.add_context_length(config.context_length)
        writer.add_embedding_length(config.dim)
        writer.add_feed_forward_length(config.ffn_dim)
        writer.add_head_count(config.n_heads)
        writer.add_head_count_kv(config.n_kv_heads)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_key_value("engine.model_kind", kind, GGUFValueType.STRING)
        for key, value in (extra or {}).items():
            _add_value(writer, key if key.startswith("engine.") else f"engine.{key}", value)
        for tensor_name in tensor_names(config):
            data = np.ascontiguousarray(tensors[tensor_name], dtype=np.float32)
            if data.ndim == 1 or file_type == "f32":
                writer.add_tensor(tensor_name, data)
            elif file_type == "f16":
                writer.add_tensor(tensor_name, data.astype(np.float16))
            else:
                writer.add_tensor(
                    tensor_name, quantize(data, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0
                )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(path)
    except OSError as exc:
        raise TrainError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path
