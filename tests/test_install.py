"""`pip install .` from a clone: build the wheel, install it into a fresh virtual environment and run
`import franca` and `franca --help` there (no network: the dependencies come from this environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _clone(dst: Path) -> Path:
    """The repository's files (tracked and new, not ignored) copied to dst, as a fresh clone has them."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what the build reads
        names = [
            str(p.relative_to(ROOT))
            for p in [ROOT / "pyproject.toml", ROOT / "README.md", *(ROOT / "franca").rglob("*")]
            if p.is_file()
        ]
    for name in names:
        src = ROOT / name
        if src.is_file() and "__pycache__" not in src.parts:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    src = _clone(tmp_path / "clone")
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist),
            str(src),
        ]
    )
    wheels = list(dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["franca_vision"]  # the distribution name
    with zipfile.ZipFile(wheels[0]) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: franca-vision" in meta and "franca/configs/tiny.yaml" in names and "franca/cli.py" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # Reuse this environment's torch & co. (a path entry: its own .pth files, e.g. an editable
    # install of this checkout, are not read, so `franca` can only come from the wheel).
    (site / "zz_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheels[0])])

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run(
        [str(py), "-c", "import franca; print(franca.__file__, franca.__version__)"], cwd=tmp_path, env=env
    ).stdout
    assert str(site) in where  # imported from the installed wheel, not from the clone
    script = venv / ("Scripts/franca.exe" if os.name == "nt" else "bin/franca")
    assert "pretrain" in _run([str(script), "--help"], cwd=tmp_path, env=env).stdout
    assert "tiny" in _run([str(script), "pretrain", "--list-presets"], cwd=tmp_path, env=env).stdout
