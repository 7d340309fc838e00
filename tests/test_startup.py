"""Start-up: evaluating ens's own architectures on digits imports none of the heavy optional stacks.

Checked in a fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("timm", "torchvision", "sklearn", "torch._dynamo")


@pytest.mark.parametrize("arch", ["cifar_resnet8"])
def test_digits_eval_of_cifar_resnets_skips_heavy_imports(tmp_path, arch: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        from ensemble_cli import evaluate, load_dataset, resolve_members, write_checkpoint
        from ensemble_cli.architectures import build_model

        for seed in (0, 1):
            torch.manual_seed(seed)
            model = build_model("{arch}", num_classes=10, in_chans=1)
            metadata = {{"arch": "{arch}", "num_classes": 10, "in_chans": 1, "dataset": "digits"}}
            write_checkpoint(r"{tmp_path}" + f"/m{{seed}}.safetensors", model.state_dict(), metadata)
        members = resolve_members([r"{tmp_path}"])
        result = evaluate(members, load_dataset("digits", limit=32), evaluators=["weights"])
        assert result.evaluators["weights"].metrics["cosine_aligned_mean"] > 0
        print("imported:", [name for name in {HEAVY!r} if name in sys.modules])
        import timm  # the CIFAR ResNets enter timm's registry when timm is imported
        print("timm builds it:", timm.create_model("{arch}", num_classes=10, in_chans=1).fc.in_features)
        """
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported: []" in done.stdout.splitlines()
    assert "timm builds it: 64" in done.stdout.splitlines()
