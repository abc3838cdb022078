"""detector.native_ops: torchvision's kernels without the torchvision package, same results."""

import subprocess
import sys
from pathlib import Path

import torch
from torchvision.ops import roi_pool as torchvision_roi_pool

from detector.native_ops import roi_pool

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: in this one torchvision is already imported, and the functions
# then hand over to it. The child computes with the compiled ops alone, checks that torchvision
# was never imported, then imports it and compares bit for bit.
CHILD = """
import sys
import torch
from detector.native_ops import nms, roi_pool

gen = torch.Generator().manual_seed(0)
xy = torch.rand(200, 2, generator=gen) * 500
wh = torch.rand(200, 2, generator=gen) * 200 + 1
boxes = torch.cat([xy, xy + wh], dim=1)
scores = torch.rand(200, generator=gen)
features = torch.randn(2, 8, 40, 50, generator=gen)
rois = torch.cat([torch.randint(0, 2, (60, 1), generator=gen).float(), boxes[:60]], dim=1)
with torch.inference_mode():
    kept = nms(boxes, scores, 0.5)
    pooled = roi_pool(features, rois, 7, 1.0 / 16)
assert "torchvision" not in sys.modules, "torchvision was imported"
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"

import torchvision.ops

assert torch.equal(kept, torchvision.ops.nms(boxes, scores, 0.5))
assert torch.equal(pooled, torchvision.ops.roi_pool(features, rois, 7, 1.0 / 16))
assert kept.dtype == torch.int64 and 0 < len(kept) < 200
print("ok")
"""


def test_compiled_ops_match_torchvision_without_importing_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_gradient_flows_through_roi_pool() -> None:
    # A gradient needs torchvision's autograd formula: the call hands over to the package.
    features = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    features.requires_grad_(True)
    rois = torch.tensor([[0.0, 0.0, 0.0, 64.0, 64.0], [0.0, 16.0, 32.0, 120.0, 150.0]])
    pooled = roi_pool(features, rois, 2, 1.0 / 16)
    pooled.sum().backward()
    reference = features.detach().clone().requires_grad_(True)
    torchvision_roi_pool(reference, rois, 2, 1.0 / 16).sum().backward()
    assert torch.equal(pooled.detach(), torchvision_roi_pool(features.detach(), rois, 2, 1.0 / 16))
    assert features.grad is not None and reference.grad is not None
    assert torch.equal(features.grad, reference.grad)
    # Max pooling: each output bin routes its gradient to exactly one input cell.
    assert features.grad.sum().item() == pooled.numel()
