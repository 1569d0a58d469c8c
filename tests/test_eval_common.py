"""The shared evaluate() arguments (franca.eval.common.EvalArgs): checks, hand-over by name, and every
protocol's evaluate() naming them alike."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from franca.eval import incontext, overcluster
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
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, got 'fp16'"):
        EvalArgs(precision="fp16")
    assert EvalArgs(precision="BF16").precision == "bf16"


def test_kwargs_for_passes_declared_names_only():
    def evaluate(model, data=None, *, size=224, device="cpu", seeds=(0,), extra=1):
        return {}

    common = EvalArgs(data="root", size=None, seeds=(1, 2), batch_size=8, device="cpu", num_workers=3)
    # size None → the protocol's default; batch_size / num_workers / progress not declared → left out
    assert common.kwargs_for(evaluate) == {"data": Path("root"), "device": "cpu", "seeds": (1, 2)}


def _protocols():
    """Every module of franca/eval that defines an evaluate() (found, not listed: a new protocol is checked too)."""
    import pkgutil

    import franca.eval

    found = {}
    for info in pkgutil.iter_modules(franca.eval.__path__):
        module = importlib.import_module(f"franca.eval.{info.name}")
        fn = getattr(module, "evaluate", None)
        if fn is not None and getattr(fn, "__module__", None) == module.__name__:
            found[info.name] = fn
    return found


def test_every_protocol_is_found():
    assert set(_protocols()) == set(PROTOCOLS)


# what each shared keyword's default must look like (the meanings are EvalArgs'; see its docstring)
_SHARED_DEFAULT = {
    "size": lambda v: v is None or (isinstance(v, int) and v > 0),
    "seeds": lambda v: isinstance(v, tuple) and len(v) > 0 and all(isinstance(s, int) for s in v),
    "batch_size": lambda v: isinstance(v, int) and v > 0,
    "device": lambda v: v == "auto",
    "precision": lambda v: v == "auto",
    "num_workers": lambda v: v == 0,
    "progress": lambda v: v is True,
}


def test_every_evaluate_takes_model_data_then_the_shared_keywords():
    """evaluate(model, data=None, *, …): `data` second (positional or keyword, default None, the toy set), every
    shared name that a protocol has keyword-only with the project-wide default (device "auto"), no old
    spellings left in a signature, and a probe's own batch named probe_batch_size."""
    old_spellings = {
        "train_set",
        "val_set",
        "test_set",
        "dataset",
        "data_root",
        "extract_batch_size",
        "image_size",
        "resolution",
    }
    for name, fn in _protocols().items():
        params = inspect.signature(fn).parameters
        names = list(params)
        assert names[:2] == ["model", "data"], name
        assert params["data"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and params["data"].default is None, name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[2:]), name
        assert not old_spellings & set(params), name
        shared = [n for n in SHARED_ARGUMENTS if n in params and n != "data"]
        assert {"size", "device", "precision", "progress"} <= set(shared), name  # every protocol runs a backbone
        for arg in shared:
            assert _SHARED_DEFAULT[arg](params[arg].default), (name, arg, params[arg].default)
        # the shared keywords come first, in EvalArgs' order, before the protocol's own
        assert names[2 : 2 + len(shared)] == shared, name
        assert hasattr(fn, "__wrapped__"), f"{name}.evaluate is not wrapped by protocol_entry"
    for name in ("linear", "pca_slice"):
        assert "probe_batch_size" in inspect.signature(_protocols()[name]).parameters


def test_eval_args_kwargs_for_feeds_every_protocol():
    """The shared arguments bind to every evaluate() by name: nothing EvalArgs hands over is refused."""
    common = EvalArgs(data="root", size=64, seeds=(0, 1), batch_size=8, device="cpu", num_workers=0, progress=False)
    for name, fn in _protocols().items():
        kwargs = common.kwargs_for(fn)
        params = inspect.signature(fn).parameters
        assert set(kwargs) == set(SHARED_ARGUMENTS) & set(params), name
        inspect.signature(fn).bind(object(), **kwargs)  # raises TypeError when a name does not fit
        assert kwargs["data"] == Path("root") and kwargs["device"] == "cpu" and kwargs["progress"] is False, name
    keypoints = importlib.import_module("franca.eval.keypoints").evaluate
    assert set(EvalArgs(size=64).kwargs_for(keypoints)) == {"size", "device", "precision", "progress"}


# ---------------------------------------------------------------- protocol_entry
def _entry():
    from franca.eval.common import protocol_entry

    calls = []

    @protocol_entry()
    def evaluate(model, data=None, *, batch_size=1, device="auto", progress=True):
        from franca.utils.progress import is_quiet

        calls.append({"data": data, "batch_size": batch_size, "device": device, "quiet": is_quiet()})
        return calls[-1]

    return evaluate


def test_protocol_entry_new_names_pass_through_silently():
    import warnings

    evaluate = _entry()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = evaluate("m", "root", batch_size=4)
        assert out == {"data": "root", "batch_size": 4, "device": "auto", "quiet": False}
        assert evaluate("m", data=("a", "b"), progress=False)["quiet"] is True  # progress=False: bars off
    assert list(inspect.signature(evaluate).parameters) == ["model", "data", "batch_size", "device", "progress"]


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("tr", "va"), {}),
        (("tr", "va", "cpu"), {}),
        ((), {"train_set": "tr", "val_set": "va"}),
        ((), {"data_root": "root"}),
        ((), {"extract_batch_size": 7}),
    ],
)
def test_protocol_entry_passes_no_other_name(args, kwargs):
    """No release had the old names (train_set/val_set, data_root, extract_batch_size, a positional device):
    protocol_entry does not translate them; Python's own TypeError refuses them."""
    evaluate = _entry()
    with pytest.raises(TypeError, match="positional argument|unexpected keyword argument"):
        evaluate("m", *args, **kwargs)


@pytest.mark.parametrize(
    "protocol, args, kwargs",
    [
        ("knn", (), {"data_root": "root"}),
        ("linear", (), {"extract_batch_size": 8}),
        ("logreg", (), {"dataset": "cars"}),
        ("overcluster", ("root", "cpu"), {}),
    ],
)
def test_old_evaluate_names_are_a_type_error(protocol, args, kwargs):
    """A protocol's evaluate() called with a never-released name fails at once, naming it."""
    fn = importlib.import_module(f"franca.eval.{protocol}").evaluate
    with pytest.raises(TypeError, match="positional argument|unexpected keyword argument") as exc:
        fn(object(), *args, **kwargs)
    assert next(iter(kwargs), "positional") in str(exc.value)


def test_the_readme_evaluation_example_runs_as_written():
    """The README's Python example of `evaluate()`: each call, with its keywords as written, runs on the
    built-in data (a random-init tiny model for the released weights, the toy set for the paths, a small
    size, one seed and the CPU) and returns a result with a metric."""
    import ast
    import re

    import franca
    from franca.eval import incontext, knn

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "evaluate(" in b)
    calls = [
        n
        for n in ast.walk(ast.parse(block))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "evaluate"
    ]
    assert {c.func.value.id for c in calls} == {"knn", "incontext"}
    model = franca.build_backbone("vitt8")  # stands in for the released weights (no download in tests)
    for call in calls:
        module = {"knn": knn, "incontext": incontext}[call.func.value.id]
        assert isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str)  # a root path
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        assert set(kwargs) <= set(inspect.signature(module.evaluate).parameters), kwargs
        kwargs.update(size=32, seeds=(0,), device="cpu", progress=False)
        if module is incontext:
            kwargs.update(k=5, memory_size=2000)
        else:
            kwargs.update(n_per_class=20)  # a few-shot train split keeps the test short
        result = module.evaluate(model, None, **kwargs)  # None: the built-in toy set instead of the path
        if module is knn:  # the README: percent for classification, a fraction for dense mIoU
            assert result["metric"] == result["results"]["top1_k20"] and 1.0 < result["metric"] <= 100.0
        else:
            assert 0.0 <= result["metric"] <= 1.0 and result["metric_name"] == "miou"


# ---------------------------------------------------------------- EvalArgs / protocol_entry
def test_eval_args_default_seeds_leave_each_protocol_its_own():
    """EvalArgs() used to hand seeds=(0,) to every protocol, so overclustering ran one seed instead of its
    five (Leopart's); left at None it is omitted, as its docstring says of every default."""
    assert EvalArgs().seeds is None
    for fn in (overcluster.evaluate, incontext.evaluate):
        assert "seeds" not in EvalArgs(data="root", size=64).kwargs_for(fn)
    assert EvalArgs(seeds=[3]).kwargs_for(overcluster.evaluate)["seeds"] == (3,)
    with pytest.raises(ValueError, match="seeds is empty"):
        EvalArgs(seeds=[])
