"""The torchvision shim makes basicsr and realesrgan importable, and only adds what is missing."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_basicsr_and_realesrgan_import_after_gfp():
    result = _run(
        "import gfp, basicsr, realesrgan\n"
        "from basicsr.data.degradations import rgb_to_grayscale\n"
        "import torch; x = torch.rand(3, 4, 4)\n"
        "from torchvision.transforms.functional import rgb_to_grayscale as ref\n"
        "assert torch.equal(rgb_to_grayscale(x), ref(x))\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_without_the_shim_basicsr_is_broken_on_this_torchvision():
    """Guards the reason the shim exists; if upstream fixes it, the shim becomes a no-op."""
    result = _run("import basicsr")
    if result.returncode == 0:
        assert "functional_tensor" not in result.stderr
    else:
        assert "functional_tensor" in result.stderr


def test_importing_gfp_does_not_import_torchvision():
    """The alias is made only when something imports the old name: torchvision costs 1.7 s to import."""
    result = _run("import sys, gfp, gfp.pipeline, gfp.cli; print('torchvision' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
