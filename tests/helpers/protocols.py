"""The nine evaluation commands at toy scale (tests that run every protocol on one backbone: a DINOv3 file, a
distilled student): the flags that make each run in seconds, and the subfolder of the toy set it reads."""

from __future__ import annotations

from pathlib import Path

# protocol -> (its own flags, the toy set's subfolder it reads; "" for the set's root)
TOY_PROTOCOLS: dict[str, tuple[list[str], str]] = {
    "knn": (["--size", "64", "--no-cache"], "imagenet"),
    "linear": (["--size", "64", "--epochs", "1", "--no-cache"], "imagenet"),
    "logreg": (["--size", "64", "--n-c", "3", "--max-iter", "20", "--no-cache"], "imagenet"),
    "pca-slice": (["--size", "64", "--ks", "2", "4", "--epochs", "1", "--no-cache"], "imagenet"),
    "overcluster": (["--size", "64", "--ks", "0", "8", "--niter", "5", "--nredo", "1"], ""),
    "incontext": (["--size", "64", "--k", "5", "--train-split", "train"], ""),
    "linseg": (["--size", "64", "--epochs", "1", "--cache-views", "1", "--train-split", "train"], ""),
    "keypoints": (["--size", "64"], ""),
    "depth": (["--size", "64", "--epochs", "1", "--hidden-dim", "4"], ""),
}


def common_args(weights: str | Path) -> list[str]:
    """The backbone and run flags every command shares: the file, CPU, no workers, batch 8, quiet."""
    return ["--weights", str(weights), "--device", "cpu", "--num-workers", "0", "--batch-size", "8", "--quiet"]
