"""Download released weights once into a local cache, then work offline.

Cache folder: `$FRANCA_HOME`, else `<torch.hub.get_dir()>/franca` (by default
`~/.cache/torch/hub/franca`). A file is fetched only when it is not in the cache: the bytes go to
`<cache>/.incomplete/<name>` with a tqdm progress bar on stderr, an interrupted download resumes from
where it stopped (HTTP Range), the size (Content-Length, and the release table's size when listed)
and the SHA-256 (when listed) are checked, and only then is the file renamed into place. So a file in
the cache is always complete, and once cached nothing touches the network.

With no network and no cached file, `WeightsUnavailable` names the URL and the path where the file
should be put by hand. `FRANCA_OFFLINE=1` forbids any download.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from franca.models.releases import Release, get_release

log = logging.getLogger(__name__)

HOME_ENV = "FRANCA_HOME"
OFFLINE_ENV = "FRANCA_OFFLINE"
CHUNK = 1 << 20


class WeightsUnavailable(FileNotFoundError):
    """A released file is not cached and cannot be downloaded."""


def cache_dir() -> Path:
    """Where released files are kept: $FRANCA_HOME, else <torch hub dir>/franca."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "franca"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: str | Path,
    *,
    nbytes: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` to `dest` (atomic, resumable, checked). An existing `dest` is returned untouched."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    where = f"put the file there by hand (download {url} on a machine with network access)"
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsUnavailable(f"{dest.name} is not cached and {OFFLINE_ENV} is set: {where}; expected at {dest}")
    tmp = dest.parent / ".incomplete" / dest.name
    tmp.parent.mkdir(parents=True, exist_ok=True)
    have = tmp.stat().st_size if tmp.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "franca", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            resp = None
        else:
            raise WeightsUnavailable(
                f"cannot download {url} (HTTP {exc.code} {exc.reason}); {where}; expected at {dest}"
            ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsUnavailable(f"cannot download {url} ({reason}); {where}; expected at {dest}") from exc
    total = nbytes
    if resp is not None:
        with resp:
            resumed = resp.status == 206
            if not resumed:
                have = 0  # the server ignored the range: start again
            length = resp.headers.get("Content-Length")
            if length is not None:
                total = have + int(length)
            _stream(resp, tmp, have, total, dest.name, progress, append=resumed)
    got = tmp.stat().st_size
    if total is not None and got < total:  # the connection ended early: keep the bytes for a resume
        raise WeightsUnavailable(f"download of {url} stopped at {got} of {total} bytes; run again to resume")
    for expected, what in ((total, "server size"), (nbytes, "release-table size")):
        if expected is not None and got != expected:
            tmp.unlink(missing_ok=True)
            raise WeightsUnavailable(
                f"download of {url} gave {got} bytes, {what} is {expected}; removed the "
                f"partial file, run again to retry, or {where}; expected at {dest}"
            )
    if sha256:
        digest = _sha256(tmp)
        if digest != sha256.lower():
            tmp.unlink(missing_ok=True)
            raise WeightsUnavailable(
                f"{url}: SHA-256 {digest} differs from the release table's {sha256}; the download was removed"
            )
    os.replace(tmp, dest)
    log.info("cached %s (%d bytes)", dest, got)
    return dest


def _stream(resp, tmp: Path, have: int, total: int | None, label: str, progress: bool, append: bool) -> None:
    from tqdm.auto import tqdm

    with (
        open(tmp, "ab" if append else "wb") as f,
        tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            disable=not progress,
            file=sys.stderr,
        ) as bar,
    ):
        try:
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                bar.update(len(block))
        except (http.client.HTTPException, OSError) as exc:
            f.flush()
            raise WeightsUnavailable(
                f"download of {label} interrupted after {f.tell()} bytes ({exc!r}); run again to resume from there"
            ) from exc
        f.flush()
        os.fsync(f.fileno())


def fetch_release(name: str | Release, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Local path of a released backbone (downloaded on first use); for split archives the first part."""
    rel = name if isinstance(name, Release) else get_release(name)
    folder = cache_dir()
    paths = [
        download(url, folder / fname, nbytes=rel.nbytes.get(fname), sha256=rel.sha256.get(fname), progress=progress)
        for url, fname in zip(rel.urls(base_url), rel.file_names)
    ]
    return paths[0]


def fetch_rasa(name: str | Release, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Local path of the RASA head released with `name` (downloaded on first use)."""
    rel = name if isinstance(name, Release) else get_release(name)
    url = rel.rasa_url(base_url)
    if url is None:
        raise ValueError(f"no RASA head was released with {rel.name}")
    fname = url.rsplit("/", 1)[-1]
    return download(
        url, cache_dir() / fname, nbytes=rel.nbytes.get(fname), sha256=rel.sha256.get(fname), progress=progress
    )
