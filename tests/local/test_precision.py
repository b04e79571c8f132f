"""Precision by capability: bf16 only where the CPU runs it natively AND the probe measured it faster."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.errors import TrainError
from engine.local.precision import CpuCapability, choose_precision, cpu_flags, detect_capability
from engine.local.train import default_settings, resolve_precision

NO_BF16 = CpuCapability(torch_level="AVX2", native_bf16=False)
FAST_BF16 = CpuCapability(
    torch_level="AVX512", native_bf16=True, native_via="AMX", fp32_seconds=0.030, bf16_seconds=0.010
)
SLOW_BF16 = CpuCapability(
    torch_level="AVX512", native_bf16=True, native_via="AVX512-BF16", fp32_seconds=0.030, bf16_seconds=0.028
)


def test_a_cpu_without_native_bf16_trains_in_fp32() -> None:
    choice = choose_precision("auto", NO_BF16)
    assert choice.precision == "fp32" and not choice.bf16
    assert "no native bf16" in choice.reason and "AVX2" in choice.reason
    # Even a probe that (wrongly) timed emulated bf16 as faster does not make it the choice.
    odd = CpuCapability(torch_level="AVX2", native_bf16=False, fp32_seconds=1.0, bf16_seconds=0.1)
    assert choose_precision("auto", odd).precision == "fp32"


def test_a_cpu_with_native_and_faster_bf16_trains_in_bf16() -> None:
    choice = choose_precision("auto", FAST_BF16)
    assert choice.precision == "bf16" and choice.bf16
    assert choice.reason == "bf16: native (AMX) and measured 3.00x faster than fp32"


def test_native_bf16_that_is_not_clearly_faster_stays_fp32() -> None:
    assert choose_precision("auto", SLOW_BF16).precision == "fp32"  # 1.07x: below the 1.15x bar
    unmeasured = CpuCapability(torch_level="AVX512", native_bf16=True, native_via="AMX")
    assert choose_precision("auto", unmeasured).precision == "fp32"
    at_bar = CpuCapability(torch_level="AVX512", native_bf16=True, native_via="AMX", fp32_seconds=1.15,
                           bf16_seconds=1.0)
    assert choose_precision("auto", at_bar).precision == "bf16"


def test_an_explicit_precision_wins_over_the_probe() -> None:
    assert choose_precision("bf16", NO_BF16).precision == "bf16"
    assert choose_precision("fp32", FAST_BF16).precision == "fp32"
    assert choose_precision("fp32", None).reason == "fp32: as requested"
    with pytest.raises(TrainError, match="unknown precision"):
        choose_precision("fp16", FAST_BF16)
    with pytest.raises(TrainError, match="capability"):
        choose_precision("auto", None)


def test_resolve_precision_forces_the_probe_both_ways() -> None:
    auto = default_settings("smollm2")
    assert auto.bf16 is None  # the default asks the CPU
    slow, choice = resolve_precision(auto, capability=NO_BF16)
    assert slow.bf16 is False and choice.precision == "fp32"
    fast, choice = resolve_precision(auto, capability=FAST_BF16)
    assert fast.bf16 is True and choice.precision == "bf16"
    # Everything else is kept; a set precision is not probed again.
    assert slow.lr == fast.lr == auto.lr and slow.epochs == auto.epochs
    kept, choice = resolve_precision(default_settings("smollm2", bf16=True), capability=NO_BF16)
    assert kept.bf16 is True and choice.reason == "bf16: as requested"
    assert resolve_precision(default_settings("tiny"), capability=FAST_BF16)[0].bf16 is False


def _fake_torch(level: str, *, amx: bool, avx512_bf16: bool) -> Any:
    cpu = SimpleNamespace(_is_amx_tile_supported=lambda: amx, _is_avx512_bf16_supported=lambda: avx512_bf16)
    return SimpleNamespace(cpu=cpu, backends=SimpleNamespace(cpu=SimpleNamespace(get_cpu_capability=lambda: level)))


def test_detect_capability_reads_torch_and_skips_the_probe_without_native_bf16() -> None:
    # A fake torch with no tensors at all: probing it would fail, so passing shows no probe ran.
    none = detect_capability(_fake_torch("AVX2", amx=False, avx512_bf16=False))
    assert none == CpuCapability(torch_level="AVX2", native_bf16=False)
    amx = detect_capability(_fake_torch("AVX512", amx=True, avx512_bf16=True), measure=False)
    assert amx.native_bf16 and amx.native_via == "AMX" and amx.bf16_speedup is None
    avx = detect_capability(_fake_torch("AVX512", amx=False, avx512_bf16=True), measure=False)
    assert avx.native_via == "AVX512-BF16"
    assert "no native bf16" in none.describe() and "probe" not in amx.describe()
    assert "probe bf16 3.00x fp32" in FAST_BF16.describe()


def test_cpu_flags_parse_proc_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\nbogomips\t: 4200\n")
    assert {"avx512_bf16", "amx_bf16", "avx2"} <= cpu_flags(info)
    assert "sse" not in cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()
