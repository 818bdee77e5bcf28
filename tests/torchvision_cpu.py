"""torchvision on the CPU torch of this project's machines (tests and benchmarks only).

torchvision 0.28, the release for torch 2.13, is a CUDA build on PyPI: its ``_C.so`` needs
``libtorch_cuda.so``, so beside the CPU build of torch it does not load, and ``import
torchvision`` then fails registering a fake kernel for ``torchvision::nms``, an operator only
that extension defines (Lightning's torchmetrics imports torchvision too). The models never
call it (it serves detection: NMS, RoIAlign), so :func:`ensure_torchvision_importable` defines
the two operator schemas torchvision registers unconditionally; calling them still fails.
Nothing changes where the extension loads (a CPU wheel from the PyTorch index, a CUDA machine).
``tests/conftest.py`` applies it to the test processes and, through ``tests/_site``'s
``sitecustomize``, to the processes they start.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch


def ensure_torchvision_importable() -> None:
    """Let torchvision import on a CPU torch when its wheel's C++ extension cannot load
    (see the module docstring); call it before the first ``import torchvision``."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    spec = importlib.util.find_spec("torchvision")
    extension = next(Path(spec.origin).parent.glob("_C*.so"), None) if spec.origin else None
    try:
        if extension is not None:
            torch.ops.load_library(str(extension))
            return
    except OSError:
        pass
    if hasattr(torch.ops.torchvision, "nms"):
        return
    global _TORCHVISION_SCHEMAS
    _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _TORCHVISION_SCHEMAS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) "
                                    "-> Tensor")


_TORCHVISION_SCHEMAS = None  # the library object must live as long as the process
