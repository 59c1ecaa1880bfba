"""bf16 on the CPU: native-support detection and the generator's precision cost in bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from gfp import precision
from gfp.archs import GeneratorConfig, build_generator
from gfp.devices import Placement
from gfp.precision import cpu_flags, cpu_has_native_bf16
from gfp.store import ModelStore

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


# bf16 vs float32 on seeded random weights (default init), PSNR over the [-1, 1] range, through the face
# network the pipeline runs (gfp.store). Measured on an AVX512-BF16 CPU: clean 52-53 dB. The v1 layout
# loses more (41 dB: FIR resampling, equalized layers), so its registry support keeps it out of bf16.
MIN_DB = 48.0


@pytest.mark.parametrize(
    "config",
    [
        GeneratorConfig(arch="clean", out_size=64, channel_multiplier=2, narrow=0.25),
        GeneratorConfig(arch="v1", out_size=64, channel_multiplier=1, narrow=0.25),
    ],
    ids=["clean", "v1"],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_bf16_face_network_stays_close_to_float32(config, batch, tmp_path):
    torch.manual_seed(0)
    net = build_generator(config).eval()
    torch.save({"params_ema": net.state_dict()}, tmp_path / "g.pth")
    torch.manual_seed(1)
    x = torch.rand(batch, 3, config.out_size, config.out_size) * 2 - 1
    with torch.inference_mode():
        plain, _ = net(x, return_rgb=False)
        ref = ModelStore(placement=Placement(bf16=False)).face_network(tmp_path / "g.pth").run(x)
        faces = ModelStore(placement=Placement(bf16=True)).face_network(tmp_path / "g.pth")
        out = faces.run(x)
    assert torch.equal(ref, plain)  # float32: the plain forward
    assert out.dtype == torch.float32 and out.shape == x.shape
    if config.arch == "v1":  # not declared good in bf16: the store runs it in float32
        assert not faces.placement.bf16 and torch.equal(out, ref)
        return
    assert faces.placement.bf16 and not torch.equal(out, ref), "autocast did not run in bf16"
    mse = torch.mean((out.double() - ref.double()) ** 2).item()
    psnr = 10 * math.log10(4.0 / mse)
    print(f"{config.arch} batch {batch}: bf16 vs fp32 {psnr:.1f} dB")
    assert psnr >= MIN_DB
