"""NYU Depth v2 readers: the BTS/AdaBins file layout, the labelled .mat (HDF5), and Probe3D's arrays.

- `NYUv2Depth(root, split)`, BTS layout (also what `franca data toy` writes):
  `root/nyudepthv2_{train,test}_files_with_gt.txt` with lines "rgb_path depth_path focal";
  train paths are under `root/sync/`, test paths under `root/official_splits/test/`. Depth PNGs
  are uint16 millimetres (÷1000 → metres).
- `NYUv2Labeled(mat, split)`: `nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5; `images`
  (N, 3, W, H) uint8, `rawDepths`/`depths` (N, W, H) metres) with the official `splits.mat`
  (`trainNdxs`/`testNdxs`, 1-based; 795/654 frames) beside it or given explicitly.
- `NYUv2Arrays(npz, split)`: Probe3D's `nyuv2_snorm_all.pkl` arrays saved as a numpy `.npz`
  (images, depths, train_indices, test_indices), read with `allow_pickle=False`. Pickles are
  never read (a pickle can run code when loaded): a `.pkl` gives an error that says how to
  convert a trusted one.

Items are `(image, depth)` after the joint transform (default `JointToTensor()`: float image
(3, H, W) in [0, 1], float32 depth (H, W) in metres). Depth above `max_depth` (10 m) is set to
0, the "invalid" value (Probe3D's rule: valid = depth > 0).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from franca.data.datasets.folder import CorruptImageError, require_dir, require_file
from franca.data.datasets.transforms import JointToTensor
from franca.data.images import open_image
from franca.data.toy import builtin_toy


def _depth_image(depth_m: np.ndarray, max_depth: float) -> Image.Image:
    d = np.asarray(depth_m, dtype=np.float32).copy()
    d[~np.isfinite(d) | (d > max_depth)] = 0.0
    return Image.frombytes("F", (d.shape[1], d.shape[0]), np.ascontiguousarray(d).tobytes())


def load_depth_png(path: str | os.PathLike, scale: float = 1000.0) -> np.ndarray:
    """A 16-bit depth PNG in millimetres → float32 metres."""
    p = require_file(path, "depth map")
    try:
        with Image.open(p) as im:
            arr = np.array(im)
    except (OSError, SyntaxError) as exc:
        raise CorruptImageError(f"cannot decode depth map {p}: {exc}") from exc
    if arr.ndim != 2:
        raise CorruptImageError(f"depth map {p} has shape {arr.shape}: expected a single-channel 16-bit PNG")
    return arr.astype(np.float32) / scale


class NYUv2Depth(Dataset):
    """NYUv2 in the BTS layout, split 'train' or 'test' → (image, depth)."""

    def __init__(
        self, root: str | os.PathLike, split: str = "test", transforms: Callable | None = None, max_depth: float = 10.0
    ):
        if split not in ("train", "test"):
            raise ValueError(f"NYUv2 split must be 'train' or 'test', got {split!r}")
        root = require_dir(root, "NYUv2 root (BTS layout)")
        list_file = require_file(root / f"nyudepthv2_{split}_files_with_gt.txt", f"NYUv2 {split} file list")
        self.data_dir = require_dir(
            root / ("sync" if split == "train" else "official_splits/test"), f"NYUv2 {split} frames"
        )
        self.samples: list[tuple[Path, Path, float]] = []
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(f"{list_file}:{n}: expected 'rgb_path depth_path [focal]', got {line!r}")
            if parts[1] == "None":  # BTS lists may hold frames without ground truth
                continue
            focal = float(parts[2]) if len(parts) > 2 else float("nan")
            self.samples.append((self.data_dir / parts[0].lstrip("/"), self.data_dir / parts[1].lstrip("/"), focal))
        if not self.samples:
            raise ValueError(f"NYUv2 file list {list_file} lists no frames")
        require_file(self.samples[0][0], f"NYUv2 image listed in {list_file.name}")
        self.max_depth = max_depth
        self.transforms = transforms if transforms is not None else JointToTensor()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        rgb, dep, _ = self.samples[i]
        return self.transforms(open_image(rgb, exif=False), _depth_image(load_depth_png(dep), self.max_depth))


def _split_indices(splits: Path, split: str) -> np.ndarray:
    from scipy.io import loadmat

    key = {"train": "trainNdxs", "test": "testNdxs"}[split]
    m = loadmat(str(splits))
    if key not in m:
        raise KeyError(f"{splits}: expected the key {key!r} (official NYUv2 splits.mat)")
    return np.asarray(m[key]).reshape(-1).astype(np.int64) - 1  # MATLAB is 1-based


class NYUv2Labeled(Dataset):
    """The 1,449 labelled NYUv2 frames (.mat, HDF5) restricted to the official train/test split."""

    def __init__(
        self,
        mat_file: str | os.PathLike,
        split: str = "test",
        splits_file: str | os.PathLike | None = None,
        depth_key: str = "rawDepths",
        transforms: Callable | None = None,
        max_depth: float = 10.0,
    ):
        import h5py

        if split not in ("train", "test"):
            raise ValueError(f"NYUv2 split must be 'train' or 'test', got {split!r}")
        self.mat_file = require_file(mat_file, "NYUv2 labelled data (nyu_depth_v2_labeled.mat)")
        splits = require_file(splits_file or self.mat_file.with_name("splits.mat"), "NYUv2 official splits.mat")
        self.indices = _split_indices(splits, split)
        with h5py.File(self.mat_file, "r") as f:
            for key in ("images", depth_key):
                if key not in f:
                    raise KeyError(f"{self.mat_file}: expected the dataset {key!r}; found {sorted(f.keys())}")
            n = f["images"].shape[0]
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise ValueError(f"{splits}: indices outside 1..{n}")
        self.depth_key, self.max_depth = depth_key, max_depth
        self.transforms = transforms if transforms is not None else JointToTensor()
        self._h5 = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        import h5py

        if self._h5 is None:  # opened lazily, once per process (h5py handles do not survive fork)
            self._h5 = h5py.File(self.mat_file, "r")
        k = int(self.indices[i])
        img = np.asarray(self._h5["images"][k]).transpose(2, 1, 0)  # (3, W, H) → (H, W, 3)
        depth = np.asarray(self._h5[self.depth_key][k]).T
        return self.transforms(
            Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)), _depth_image(depth, self.max_depth)
        )


PICKLE_REFUSED = (
    "{path}: a pickle file can run code when it is read, so franca does not read pickles. "
    "If you trust this file, unpickle it once yourself and save its arrays with "
    "numpy.savez('{stem}.npz', images=..., depths=..., train_indices=..., test_indices=...), "
    "then pass {stem}.npz"
)


def refuse_pickle(path: str | os.PathLike) -> None:
    """Raise ValueError explaining that a pickle is never read (and how to convert it to .npz)."""
    p = Path(path)
    raise ValueError(PICKLE_REFUSED.format(path=p, stem=p.stem))


class NYUv2Arrays(Dataset):
    """Probe3D's NYUv2 arrays as a numpy `.npz` (read with allow_pickle=False): `images` (N,3,H,W) or
    (N,H,W,3), `depths` (N,H,W) or (N,1,H,W), `train_indices`, `test_indices` (0-based)."""

    def __init__(
        self,
        npz_file: str | os.PathLike,
        split: str = "test",
        transforms: Callable | None = None,
        max_depth: float = 10.0,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"NYUv2 split must be 'train' or 'test', got {split!r}")
        path = require_file(npz_file, "NYUv2 arrays (.npz with images, depths, train_indices, test_indices)")
        if path.suffix.lower() in (".pkl", ".pickle"):
            refuse_pickle(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ("images", "depths", f"{split}_indices") if k not in data.files]
                if missing:
                    raise KeyError(f"{path}: expected the arrays {missing}; found {sorted(data.files)}")
                self.images, self.depths = data["images"], data["depths"]
                self.indices = np.asarray(data[f"{split}_indices"]).reshape(-1).astype(np.int64)
        except KeyError:
            raise
        except ValueError as exc:  # object arrays need pickle: refused
            raise ValueError(f"{path}: cannot read it without unpickling ({exc}); save plain numeric arrays") from None
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
        n = len(self.images)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise ValueError(f"{path}: {split}_indices outside 0..{n - 1}")
        self.max_depth = max_depth
        self.transforms = transforms if transforms is not None else JointToTensor()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        k = int(self.indices[i])
        img, depth = self.images[k], np.squeeze(self.depths[k])
        if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
            img = img.transpose(1, 2, 0)
        if img.dtype != np.uint8:
            img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return self.transforms(Image.fromarray(np.ascontiguousarray(img)), _depth_image(depth, self.max_depth))


def nyu_splits(root: str | os.PathLike | None) -> tuple[Dataset, Dataset]:
    """(train, test) readers for a NYUv2 source (default: the built-in toy set), chosen by its layout.

    ``root``: a folder in the BTS layout (or its parent holding ``nyuv2/``), Probe3D's arrays saved
    as ``.npz``, or the labelled ``nyu_depth_v2_labeled.mat``/``.h5`` (official splits). Pickles
    (``.pkl``) are refused with an error saying how to convert one: reading a pickle can run code.
    """
    if root is None:
        root = builtin_toy()
    root = Path(root)
    suffix = root.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        refuse_pickle(root)
    if suffix == ".npz":
        return NYUv2Arrays(root, "train"), NYUv2Arrays(root, "test")
    if suffix in (".mat", ".h5", ".hdf5"):
        return NYUv2Labeled(root, "train"), NYUv2Labeled(root, "test")
    if not (root / "nyudepthv2_test_files_with_gt.txt").is_file() and (root / "nyuv2").is_dir():
        root = root / "nyuv2"
    return NYUv2Depth(root, "train"), NYUv2Depth(root, "test")
