"""bf16 on the CPU: native-support detection and the generator's precision cost in bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from gfp import precision
from gfp.archs import GeneratorConfig, build_generator
from gfp.precision import cpu_flags, cpu_has_native_bf16, generator_forward

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
bugs\t\t: sysret_ss_attrs
"""


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Point the detection at a written cpuinfo and a chosen PyTorch capability."""

    def use(extra_flags: str, capability: str = "AVX512") -> None:
        info = tmp_path / "cpuinfo"
        info.write_text(X86_CPUINFO.format(extra=extra_flags))
        monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(info))
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        cpu_has_native_bf16.cache_clear()

    yield use
    cpu_has_native_bf16.cache_clear()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(X86_CPUINFO.format(extra="avx512_bf16"))
    assert {"avx2", "avx512f", "avx512_bf16"} <= cpu_flags(info)
    assert "sysret_ss_attrs" not in cpu_flags(info)  # the bugs line is not a feature
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("flags", "capability", "native"),
    [
        ("avx512_bf16", "AVX512", True),
        ("amx_bf16 amx_tile", "AVX512", True),
        ("avx512_vnni", "AVX512", False),  # AVX-512 without bf16 instructions: emulated
        ("avx512_bf16", "AVX2", False),  # PyTorch restricted below AVX-512
    ],
)
def test_native_bf16_needs_the_flag_and_avx512(fake_cpu, flags, capability, native):
    fake_cpu(flags, capability)
    assert cpu_has_native_bf16() is native


# bf16 vs float32 on seeded random weights (default init), PSNR over the [-1, 1] range. Measured on an
# AVX512-BF16 CPU: clean 52-53 dB, v1 41 dB (the paper model's FIR resampling and equalized layers lose
# more, and its random-init output spans about twice the range).
MIN_DB = {"clean": 48.0, "v1": 38.0}


@pytest.mark.parametrize(
    "config",
    [
        GeneratorConfig(arch="clean", out_size=64, channel_multiplier=2, narrow=0.25),
        GeneratorConfig(arch="v1", out_size=64, channel_multiplier=1, narrow=0.25),
    ],
    ids=["clean", "v1"],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_bf16_generator_stays_close_to_float32(config, batch):
    torch.manual_seed(0)
    net = build_generator(config).eval()
    torch.manual_seed(1)
    x = torch.rand(batch, 3, config.out_size, config.out_size) * 2 - 1
    ref = generator_forward(net, x)
    with torch.inference_mode():
        plain, _ = net(x, return_rgb=False)
    assert torch.equal(ref, plain)  # bf16=False is the plain float32 forward
    out = generator_forward(net, x, bf16=True)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert not torch.equal(out, ref), "autocast did not run in bf16"
    mse = torch.mean((out.double() - ref.double()) ** 2).item()
    psnr = 10 * math.log10(4.0 / mse)
    print(f"{config.arch} batch {batch}: bf16 vs fp32 {psnr:.1f} dB")
    assert psnr >= MIN_DB[config.arch]
