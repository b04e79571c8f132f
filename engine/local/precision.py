"""Which float precision to train in on this CPU: bf16 only where it is native AND measured faster.

bf16 autocast halves the bytes every matrix product reads, and on a CPU with
AVX512-BF16 or AMX the products themselves run several times faster. On a CPU
without them torch emulates bf16 in software, which is far slower than fp32.
Machines of the same kind differ here, so the choice is made per machine:

1. *native?* -- torch's own CPU feature checks (``torch.cpu._is_avx512_bf16_supported``,
   ``_is_amx_tile_supported``), falling back to the ``/proc/cpuinfo`` flags;
2. *faster?* -- a short probe (well under a second of each kind) times one
   training-shaped matrix product forward and backward in fp32 and under bf16
   autocast, alternating, and compares medians. Skipped when bf16 is not native.

:func:`choose_precision` turns the request (``auto``, ``fp32`` or ``bf16``) and a
:class:`CpuCapability` into a :class:`PrecisionChoice` whose ``reason`` is printed
and whose ``precision`` is recorded with the model. Tests pass a made-up
:class:`CpuCapability`; nothing here reads a global.

Usage::

    capability = detect_capability(torch)                  # about a second on a bf16 CPU
    choice = choose_precision("auto", capability)
    print(choice.reason)                                    # "bf16: native (AMX) and 2.9x faster than fp32"
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import TrainError

__all__ = ["PRECISIONS", "CpuCapability", "PrecisionChoice", "choose_precision", "cpu_flags", "detect_capability"]

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
"""Accepted values of ``--precision``."""

_NATIVE_FLAGS = ("amx_bf16", "avx512_bf16")
# bf16 must beat fp32 by this much: a near tie is not worth its coarser rounding.
_MIN_SPEEDUP = 1.15


@dataclass(frozen=True, kw_only=True, slots=True)
class CpuCapability:
    """What this CPU offers for training: torch's capability level, native bf16, probe timings.

    Usage: ``CpuCapability(torch_level="AVX2", native_bf16=False)`` (a CPU without bf16, for a test)
    """

    torch_level: str
    native_bf16: bool
    native_via: str = ""  # e.g. "AMX" or "AVX512-BF16"; empty when not native
    fp32_seconds: float | None = None  # median probe time; None when not measured
    bf16_seconds: float | None = None

    @property
    def bf16_speedup(self) -> float | None:
        """fp32 time / bf16 time of the probe (above 1: bf16 is faster), None when not measured."""
        if self.fp32_seconds is None or not self.bf16_seconds:
            return None
        return self.fp32_seconds / self.bf16_seconds

    def describe(self) -> str:
        """One line: ``AVX512, native bf16 (AMX), probe bf16 2.9x fp32``."""
        native = f"native bf16 ({self.native_via})" if self.native_bf16 else "no native bf16"
        speed = self.bf16_speedup
        probe = "" if speed is None else f", probe bf16 {speed:.2f}x fp32"
        return f"{self.torch_level}, {native}{probe}"


@dataclass(frozen=True, kw_only=True, slots=True)
class PrecisionChoice:
    """The precision to train in and why.

    Usage: ``choice.bf16``, ``choice.precision`` ("fp32" or "bf16"), ``print(choice.reason)``
    """

    precision: str
    reason: str
    capability: CpuCapability | None = None

    @property
    def bf16(self) -> bool:
        """True when training runs under bf16 autocast."""
        return self.precision == "bf16"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no ``/proc/cpuinfo``).

    Usage: ``"avx512_bf16" in cpu_flags()``
    """
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _native_via(torch: Any) -> str:
    """How the CPU runs bf16 natively ("AMX", "AVX512-BF16"), or "" when it does not."""
    checks = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    known = False
    for name, check in checks:
        probe = getattr(getattr(torch, "cpu", None), check, None)
        if callable(probe):
            known = True
            if probe():
                return name
    if known:
        return ""
    # An older torch without the checks: the kernel's flags say the same.
    flags = cpu_flags()
    return next(({"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}[f] for f in _NATIVE_FLAGS if f in flags), "")


def _probe_seconds(torch: Any, *, rounds: int, tokens: int, dim: int, hidden: int) -> tuple[float, float]:
    """Median seconds of one training-shaped matmul forward+backward in fp32 and in bf16 autocast."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, dim, generator=generator)
    w = torch.randn(hidden, dim, generator=generator, requires_grad=True)

    def once(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = torch.nn.functional.linear(x, w)
        y.float().sum().backward()
        w.grad = None
        return time.perf_counter() - started

    once(False), once(True)  # first calls pay one-off set-up (oneDNN kernels)
    fp32, bf16 = [], []
    for _ in range(rounds):  # alternate, so a burst of load elsewhere hits both alike
        fp32.append(once(False))
        bf16.append(once(True))
    return statistics.median(fp32), statistics.median(bf16)


def detect_capability(torch: Any, *, measure: bool = True, rounds: int = 7) -> CpuCapability:
    """This CPU's capability; times the probe only when bf16 is native (and ``measure``).

    Run it after ``torch.set_num_threads``: the probe uses the threads training will use.
    Usage: ``detect_capability(torch).describe()``
    """
    level = str(torch.backends.cpu.get_cpu_capability())
    via = _native_via(torch)
    if not via or not measure:
        return CpuCapability(torch_level=level, native_bf16=bool(via), native_via=via)
    # One SmolLM2 feed-forward product for a batch of 8 examples of ~48 tokens.
    fp32, bf16 = _probe_seconds(torch, rounds=rounds, tokens=384, dim=576, hidden=1536)
    return CpuCapability(torch_level=level, native_bf16=True, native_via=via, fp32_seconds=fp32, bf16_seconds=bf16)


def choose_precision(requested: str, capability: CpuCapability | None) -> PrecisionChoice:
    """fp32 or bf16 for ``requested`` ("auto", "fp32", "bf16") on a CPU with ``capability``.

    ``auto`` is bf16 only when bf16 is native and the probe measured it at least 1.15x faster.
    Usage: ``choose_precision("auto", CpuCapability(torch_level="AVX2", native_bf16=False)).precision == "fp32"``
    """
    if requested not in PRECISIONS:
        raise TrainError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return PrecisionChoice(precision=requested, reason=f"{requested}: as requested", capability=capability)
    if capability is None:
        raise TrainError("precision 'auto' needs the CPU's capability (detect_capability)")
    if not capability.native_bf16:
        reason = f"fp32: the CPU has no native bf16 ({capability.torch_level}); bf16 would be emulated"
        return PrecisionChoice(precision="fp32", reason=reason, capability=capability)
    speedup = capability.bf16_speedup
    if speedup is None:
        reason = f"fp32: native bf16 ({capability.native_via}) but not measured"
        return PrecisionChoice(precision="fp32", reason=reason, capability=capability)
    if speedup >= _MIN_SPEEDUP:
        reason = f"bf16: native ({capability.native_via}) and measured {speedup:.2f}x faster than fp32"
        return PrecisionChoice(precision="bf16", reason=reason, capability=capability)
    reason = f"fp32: native bf16 ({capability.native_via}) measured only {speedup:.2f}x fp32 here"
    return PrecisionChoice(precision="fp32", reason=reason, capability=capability)
