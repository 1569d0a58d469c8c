"""What checking a cached weights file costs at load, next to loading it.

    python benchmarks/hub_verify.py [--mb 512] [--repeats 3]

Writes a torch .pth of about `--mb` MB (float32 tensors) to a temporary cache folder, records it as a download
does, then times (median seconds; the file is in the page cache after the first read):
- torch.load: `torch.load(weights_only=True)`, what every load pays anyway;
- sha256: hashing the whole file, what a check at every load would add;
- verify, remembered: `verify_file` when the file is unchanged since its last check (stat + two small reads);
- verify, first use: `verify_file` on a file with no record (zip CRCs + SHA-256), once per file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from franca.models import hub  # noqa: E402


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="franca-hub-bench-") as tmp:
        folder = Path(tmp)
        path = folder / "bench.pth"
        n = args.mb * (1 << 20) // 4 // 16
        torch.save({f"w{i}": torch.randn(n) for i in range(16)}, path)
        size = path.stat().st_size
        hub.verify_file(path, records=folder)  # first use: recorded, as after a download

        def first_use() -> None:
            for q in (folder / "bench.pth.sha256", folder / ".checked" / "bench.pth.json"):
                q.unlink(missing_ok=True)
            hub.verify_file(path, records=folder)

        rows = [
            ("torch.load", _median(lambda: torch.load(path, map_location="cpu", weights_only=True), args.repeats)),
            ("sha256", _median(lambda: hub._sha256(path), args.repeats)),
            ("verify, remembered", _median(lambda: hub.verify_file(path, records=folder), args.repeats)),
            ("verify, first use", _median(first_use, args.repeats)),
        ]
    print(f"file: {size / 1e6:.0f} MB, median of {args.repeats}, torch {torch.__version__}")
    for name, sec in rows:
        print(f"{name:20s} {sec:8.3f} s  {size / 1e6 / sec if sec > 0 else float('inf'):8.0f} MB/s")


if __name__ == "__main__":
    main()
