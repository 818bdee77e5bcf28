"""Test subprocesses: run :func:`torchvision_cpu.ensure_torchvision_importable` just before
their first ``import torchvision`` (``tests/conftest.py`` puts this folder on PYTHONPATH).

Lazy, so a subprocess that never imports torchvision does not import torch for it."""

import importlib.abc
import sys
from pathlib import Path


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 - importlib's
        if name == "torchvision":
            sys.meta_path.remove(self)
            tests = str(Path(__file__).resolve().parent.parent)
            if tests not in sys.path:
                sys.path.append(tests)
            from torchvision_cpu import ensure_torchvision_importable

            ensure_torchvision_importable()
        return None


sys.meta_path.insert(0, _BeforeTorchvision())
