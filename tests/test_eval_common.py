"""The shared evaluate() arguments (franca.eval.common.EvalArgs): checks, hand-over by name, and every
protocol's evaluate() naming them alike."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from franca.eval.common import SHARED_ARGUMENTS, EvalArgs

PROTOCOLS = ("knn", "linear", "logreg", "pca_slice", "overcluster", "incontext", "linseg", "keypoints", "depth")


def test_eval_args_checks_values():
    assert EvalArgs(data="x", seeds=[3, 4]).data == Path("x") and EvalArgs(seeds=[3, 4]).seeds == (3, 4)
    with pytest.raises(ValueError, match="seeds is empty"):
        EvalArgs(seeds=[])
    with pytest.raises(ValueError, match="EvalArgs.size"):
        EvalArgs(size=0)
    with pytest.raises(ValueError, match="num_workers"):
        EvalArgs(num_workers=-1)


def test_kwargs_for_passes_declared_names_only():
    def evaluate(model, data=None, *, size=224, device="cpu", seeds=(0,), extra=1):
        return {}

    common = EvalArgs(data="root", size=None, seeds=(1, 2), batch_size=8, device="cpu", num_workers=3)
    # size None → the protocol's default; batch_size / num_workers / progress not declared → left out
    assert common.kwargs_for(evaluate) == {"data": Path("root"), "device": "cpu", "seeds": (1, 2)}


def test_every_protocol_names_the_shared_arguments_alike():
    """Each evaluate() takes the model first and device always; the other shared arguments, where a
    protocol has them, under the shared names (no image_size / resolution / extraction-size aliases)."""
    for name in PROTOCOLS:
        params = inspect.signature(importlib.import_module(f"franca.eval.{name}").evaluate).parameters
        assert next(iter(params)) == "model", name
        assert "device" in params, name
        assert not {"image_size", "resolution"} & set(params), name
        shared = set(SHARED_ARGUMENTS) & set(params)
        assert "size" in shared or "config" in params, name  # linseg: size and batch live in LinsegConfig
    keypoints = importlib.import_module("franca.eval.keypoints").evaluate
    assert set(EvalArgs(size=64).kwargs_for(keypoints)) == {"size", "device", "progress"}
