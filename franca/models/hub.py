"""Download released weights once into a local cache, then work offline; nothing unchecked enters the cache.

Cache folder: `$FRANCA_HOME`, else `<torch.hub.get_dir()>/franca` (by default `~/.cache/torch/hub/franca`).
Before any download, a copy kept by the official torch.hub entry points (`<torch hub dir>/checkpoints/<official
file name>`, see `Release.torch_hub_copies`) is used in place. A download:
- holds a lock per file (`fcntl.flock` on `<cache>/.incomplete/<name>.lock`): a second process (another torchrun
  rank) waits, then finds the file complete and uses it;
- writes to a name of its own process (`<cache>/.incomplete/<name>.<host>-<pid>.part`) with a tqdm bar on stderr;
  an interrupted download resumes from where it stopped (HTTP Range, under the lock);
- refuses a body that does not start as the file must (a `.pth` is a zip archive, the first part of the split
  ViT-g archive is gzip, a later part is not text): an HTML rate-limit page or a proxy's JSON is never cached;
- checks the size on every path: the total of Content-Range (a 206 must start where it was asked to, else the
  download restarts from zero), Content-Length, the release table's size; a 416 answer is checked like a
  finished download rather than trusted; a `.pth` must be a complete torch zip archive whose every member
  passes its CRC (this also catches a body with no length, or a length that lies); the split archive's parts
  together must be one complete gzip stream;
- only then writes `<name>.sha256` (sha256sum's format) and renames the file into place.

At load, a cached file must still start as its kind does and match its `.sha256`. Hashing gigabytes at every
load is slow, so a successful check is remembered in `<cache>/.checked/<name>.json`, keyed on the file's size,
inode, device, mtime_ns and ctime_ns: any write to the file (even one that restores its mtime: the ctime cannot
be set back) brings a full check at the next load. Damage below the file system (bit rot that no write made)
is not seen once a file was checked; delete the `.checked` folders in the cache to check everything again.
Copies in torch.hub's folder are recorded the same way, in `<cache>/.torch-hub/`. A file that has no
`.sha256` (put there by hand, or cached by an older version) is checked as a download is, then recorded.

With no network and no cached file, `WeightsUnavailable` names the URL and the path where the file should be
put by hand. `FRANCA_OFFLINE=1` forbids any download. Every error is one line that names the URL or the file and
says what to do.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from franca.models.releases import Release, get_release

log = logging.getLogger(__name__)

HOME_ENV = "FRANCA_HOME"
OFFLINE_ENV = "FRANCA_OFFLINE"
CHUNK = 1 << 20
STALE_S = 600.0
"""a partial file of another host untouched this long belongs to no live download (its socket timed out)"""
ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"
_PART = re.compile(r"\.part_([a-z]+)$")
_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_UNSATISFIED = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$")


class WeightsUnavailable(FileNotFoundError):
    """A released file is not cached and cannot be downloaded."""


class WeightsCorrupt(WeightsUnavailable):
    """A downloaded or cached file is not what the release holds (wrong kind, size, structure or SHA-256)."""


def cache_dir() -> Path:
    """Where released files are kept: $FRANCA_HOME, else <torch hub dir>/franca."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return _torch_hub_dir() / "franca"


def _torch_hub_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- what a file must be
def file_kind(name: str) -> str:
    """What a released file of this name starts with: "zip" (a torch .pth), "gzip" (a .tar.gz or the first
    part of a split one) or "binary" (a later part of a split archive: any bytes, but not text)."""
    part = _PART.search(name)
    if part:
        return "gzip" if part.group(1) == "aa" and name[: part.start()].endswith((".tar.gz", ".tgz")) else "binary"
    if name.endswith((".pth", ".pt")):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "gzip"
    return "binary"


def _looks_like_text(head: bytes) -> bool:
    sample = head[:4096]
    if not sample or b"\x00" in sample:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    if printable >= 0.95 * len(sample):
        return True
    for cut in range(4):  # UTF-8 text (a page in another script), a multi-byte character cut at the end
        with contextlib.suppress(UnicodeDecodeError):
            sample[: len(sample) - cut].decode("utf-8")
            return True
    return False


def _describe(head: bytes) -> str:
    """What a body that is not a weights file looks like, with its first characters."""
    if not head:
        return "an empty body"
    low = head.lstrip()[:512].lower()
    preview = "".join(c if c.isprintable() else " " for c in head[:60].decode("utf-8", "replace")).strip()
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low or b"<head" in low or b"<body" in low:
        what = "an HTML page"
    elif low.startswith(b"<"):
        what = "XML or HTML text"
    elif low[:1] in (b"{", b"["):
        what = "JSON text"
    elif _looks_like_text(head):
        what = "text"
    else:
        return f"bytes {head[:8].hex(' ')} …"
    return f"{what} ({preview!r})"


def _head_problem(head: bytes, kind: str) -> str | None:
    """Why a body starting with `head` cannot be a file of `kind`, or None."""
    if kind == "zip" and not head.startswith(ZIP_MAGIC):
        return f"{_describe(head)}, not a torch .pth (a zip archive, which starts with 'PK\\x03\\x04')"
    if kind == "gzip" and not head.startswith(GZIP_MAGIC):
        return f"{_describe(head)}, not a gzip archive (which starts with the bytes 1f 8b)"
    if kind == "binary" and (not head or _looks_like_text(head)):
        return f"{_describe(head)}, not a part of a compressed archive"
    return None


def _read_head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _structure_problem(path: Path, kind: str) -> str | None:
    """Why a complete file of `kind` cannot be loaded, or None: a `.pth` must be a torch zip archive whose
    every member passes its CRC (a truncated, padded or spliced body fails)."""
    if kind != "zip":
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                return "a zip archive without the data.pkl of a torch checkpoint"
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, NotImplementedError) as exc:
        return f"not a complete zip archive ({exc})"
    return f"its zip member {bad} fails its CRC check" if bad else None


def _gzip_problem(paths: list[Path]) -> str | None:
    """Why the parts, joined, are not one complete gzip stream (CRC and length checked), or None."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        for p in paths:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    if d.eof:
                        return f"bytes after the end of the gzip stream (in {p.name})"
                    while block:
                        d.decompress(block, 4 * CHUNK)
                        block = d.unconsumed_tail
                    if d.eof and d.unused_data:
                        return f"bytes after the end of the gzip stream (in {p.name})"
    except zlib.error as exc:
        return f"not one valid gzip stream ({exc})"
    return None if d.eof else "the gzip stream ends early (a part is truncated)"


# ------------------------------------------------------------------------------------- records and checks
def _record_path(path: Path, records: Path) -> Path:
    return records / f"{path.name}.sha256"


def _stamp_path(path: Path, records: Path) -> Path:
    return records / ".checked" / f"{path.name}.json"


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "inode": st.st_ino,
        "device": st.st_dev,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _write_atomic(path: Path, text: str) -> None:
    """Write a small sidecar (a process-own temporary name, then a rename); a read-only cache is no error."""
    tmp = path.with_name(f".{path.name}.{_token()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.debug("could not write %s (%s)", path, exc)


def _read_record(record: Path, path: Path) -> str | None:
    """The SHA-256 in `record` (sha256sum's format), None if there is none."""
    try:
        text = record.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsCorrupt(f"cannot read {record} ({exc}); delete {path} and {record} to download it again") from exc
    digest = text.split()[0].lower() if text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise WeightsCorrupt(f"{record} holds no SHA-256; delete {path} and {record} to download it again")
    return digest


def _record(path: Path, records: Path, digest: str, st: os.stat_result | None = None) -> None:
    """Write `<name>.sha256` (unless `st` is given, only the stamp that says the file was checked as it is)."""
    if st is None:
        _write_atomic(_record_path(path, records), f"{digest}  {path.name}\n")
        return
    _write_atomic(_stamp_path(path, records), json.dumps({**_stat_key(st), "sha256": digest}) + "\n")


def _stamp_matches(path: Path, records: Path, st: os.stat_result, digest: str) -> bool:
    try:
        stamp = json.loads(_stamp_path(path, records).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp == {**_stat_key(st), "sha256": digest}


def verify_file(
    path: Path,
    *,
    records: Path,
    nbytes: int | None = None,
    sha256: str | None = None,
    fix: str | None = None,
) -> None:
    """Check a file about to be used: its kind (first bytes), the table's size and SHA-256, and the SHA-256
    recorded in `records` (hashed in full only when the file changed since its last check). A file with no
    record is checked as a download is (structure too) and then recorded. Raises WeightsCorrupt."""
    fix = fix or f"delete {path} to download it again"
    kind = file_kind(path.name)
    problem = _head_problem(_read_head(path), kind)
    if problem:
        raise WeightsCorrupt(f"{path} is not a released weights file: it holds {problem}; {fix}")
    st = path.stat()
    if nbytes is not None and st.st_size != nbytes:
        raise WeightsCorrupt(f"{path} has {st.st_size} bytes, the release table says {nbytes}; {fix}")
    record = _record_path(path, records)
    recorded = _read_record(record, path)
    if recorded is not None and _stamp_matches(path, records, st, recorded):
        if sha256 and recorded != sha256.lower():
            raise WeightsCorrupt(f"{path}: SHA-256 {recorded} differs from the release table's {sha256}; {fix}")
        return
    if recorded is None:
        problem = _structure_problem(path, kind)
        if problem:
            raise WeightsCorrupt(f"{path} is not a complete weights file: {problem}; {fix}")
    log.info("checking the SHA-256 of %s", path)
    digest = _sha256(path)
    if sha256 and digest != sha256.lower():
        raise WeightsCorrupt(f"{path}: SHA-256 {digest} differs from the release table's {sha256}; {fix}")
    if recorded is not None and digest != recorded:
        raise WeightsCorrupt(
            f"{path} changed since it was downloaded (SHA-256 {digest[:16]}…, {record.name} says {recorded[:16]}…); "
            f"{fix}"
        )
    if recorded is None:
        log.info("recorded the SHA-256 of %s (it had none) in %s", path, record)
        _record(path, records, digest)
    _record(path, records, digest, st)


# ------------------------------------------------------------------------------------- one download
def _token() -> str:
    host = re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


@contextlib.contextmanager
def _file_lock(path: Path, label: str, progress: bool) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (waiting for the holder); yields False where locks do not work."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: each process downloads on its own, atomically
        yield False
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as exc:
        log.warning("cannot create the lock %s (%s): downloading %s without resume", path, exc, label)
        yield False
        return
    locked = True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the lock %s: another process is downloading %s", path, label)
            if progress:
                print(f"{label}: another process is downloading it; waiting (lock {path})", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK on a network file system without locks
            log.warning("cannot lock %s (%s): downloading %s without resume", path, exc, label)
            locked = False
        yield locked
    finally:
        os.close(fd)


def _adopt_partial(incomplete: Path, name: str, tmp: Path) -> int:
    """Under the lock: take over the largest partial file a dead download left (this host's, an older
    version's `<name>`, or another host's untouched for STALE_S) as `tmp`; drop the others. Its size."""
    host = _token().rsplit("-", 1)[0]
    cands = [incomplete / name, *(Path(p) for p in glob.glob(glob.escape(str(incomplete / name)) + ".*.part"))]
    dead = []
    for p in cands:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        owner = p.name[len(name) + 1 : -len(".part")].rsplit("-", 1)[0] if p.name != name else host
        if owner == host or time.time() - st.st_mtime > STALE_S:
            dead.append((st.st_size, p))
    if not dead:
        return 0
    dead.sort()
    for _, p in dead[:-1]:
        p.unlink(missing_ok=True)
    try:
        os.rename(dead[-1][1], tmp)
    except FileNotFoundError:
        return 0
    return tmp.stat().st_size


def _int_header(resp, key: str) -> int | None:
    value = resp.headers.get(key)
    return int(value) if value is not None and value.strip().isdigit() else None


def _read_at_least(resp, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        block = resp.read(n - len(buf))
        if not block:
            break
        buf += block
    return buf


def _transfer(
    url: str, tmp: Path, have: int, kind: str, label: str, progress: bool, timeout: float, resumable: bool, where: str
) -> tuple[int | None, bool]:
    """Bring `tmp` (holding `have` bytes) to the whole body. Returns the total size the server announced
    (None if it gave none) and whether the partial file was declared complete by a 416 (then unverified)."""
    restarted = False

    def restart(why: str) -> None:
        nonlocal restarted, have
        if restarted:
            raise WeightsUnavailable(f"cannot download {url}: {why} again after starting from zero; {where}")
        log.warning("%s: %s; starting again from zero", url, why)
        tmp.unlink(missing_ok=True)
        restarted, have = True, 0

    while True:
        headers = {"User-Agent": "franca", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as exc:
            crange = exc.headers.get("Content-Range") if exc.headers is not None else None
            exc.close()
            if exc.code == 416 and have:
                m = _UNSATISFIED.match(crange or "")
                if m and int(m.group(1)) == have:
                    return have, True  # the partial file may be the whole file: checked like a download
                restart(f"the server refused the range from byte {have} (HTTP 416, Content-Range {crange!r})")
                continue
            raise WeightsUnavailable(f"cannot download {url} (HTTP {exc.code} {exc.reason}); {where}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise WeightsUnavailable(f"cannot download {url} ({reason}); {where}") from exc
        with resp:
            length = _int_header(resp, "Content-Length")
            if resp.status == 206:
                m = _RANGE.match(resp.headers.get("Content-Range") or "")
                start = int(m.group(1)) if m else None
                if start != have or (m and length is not None and length != int(m.group(2)) - start + 1):
                    crange = resp.headers.get("Content-Range")
                    restart(f"asked for bytes {have}-, the server sent Content-Range {crange!r}")
                    continue
                total = int(m.group(3)) if m.group(3) != "*" else (have + length if length is not None else None)
                _stream(resp, tmp, have, total, label, progress, append=True, first=b"", resumable=resumable)
                return total, False
            try:
                head = _read_at_least(resp, 4096)
            except (http.client.HTTPException, OSError) as exc:
                raise WeightsUnavailable(f"download of {url} interrupted at its start ({exc!r}); run again") from exc
            problem = _head_problem(head, kind)
            if problem:
                ctype = resp.headers.get("Content-Type")
                raise WeightsCorrupt(
                    f"{url} sent {problem}{f' (Content-Type {ctype})' if ctype else ''}; nothing was cached "
                    f"(a rate limit, proxy or captive portal?): run again later, or {where}"
                )
            _stream(resp, tmp, 0, length, label, progress, append=False, first=head, resumable=resumable)
            return length, False


def _stream(
    resp,
    tmp: Path,
    have: int,
    total: int | None,
    label: str,
    progress: bool,
    append: bool,
    first: bytes,
    resumable: bool,
) -> None:
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
            f.write(first)
            bar.update(len(first))
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                bar.update(len(block))
        except (http.client.HTTPException, OSError) as exc:
            f.flush()
            what = "run again to resume from there" if resumable else "run again"
            raise WeightsUnavailable(
                f"download of {label} interrupted after {f.tell()} bytes ({exc!r}); {what}"
            ) from exc
        f.flush()
        os.fsync(f.fileno())


def _download_locked(
    url: str,
    dest: Path,
    incomplete: Path,
    locked: bool,
    nbytes: int | None,
    sha256: str | None,
    progress: bool,
    timeout: float,
    where: str,
) -> None:
    kind = file_kind(dest.name)
    tmp = incomplete / f"{dest.name}.{_token()}.part"
    have = _adopt_partial(incomplete, dest.name, tmp) if locked else 0
    try:
        for attempt in range(2):
            total, unverified = _transfer(url, tmp, have, kind, dest.name, progress, timeout, locked, where)
            got = tmp.stat().st_size
            if total is not None and got < total:  # the connection ended early: keep the bytes for a resume
                what = "run again to resume" if locked else "run again"
                raise WeightsUnavailable(f"download of {url} stopped at {got} of {total} bytes; {what}")
            problem = _head_problem(_read_head(tmp), kind)
            for expected, source in ((total, "the server announced"), (nbytes, "the release table says")):
                if problem is None and expected is not None and got != expected:
                    problem = f"{got} bytes where {source} {expected}"
            digest = _sha256(tmp) if problem is None else None
            if problem is None and sha256 and digest != sha256.lower():
                problem = f"SHA-256 {digest} where the release table says {sha256}"
            problem = problem or _structure_problem(tmp, kind)
            if problem is None:
                break
            tmp.unlink(missing_ok=True)
            if unverified and attempt == 0:  # a 416 declared a partial file complete that is not: start again
                log.warning("%s: the partial file was not the file (%s); starting again from zero", url, problem)
                have = 0
                continue
            raise WeightsCorrupt(
                f"download of {url} is not a valid {dest.name}: {problem}; removed it: run again, or {where}"
            )
    except BaseException:
        if not locked:  # no resume without a lock: leave nothing behind
            tmp.unlink(missing_ok=True)
        raise
    _record(dest, dest.parent, digest)
    os.replace(tmp, dest)
    _record(dest, dest.parent, digest, dest.stat())
    log.info("cached %s (%d bytes)", dest, got)


def _fetch(
    url: str,
    dest: Path,
    *,
    nbytes: int | None,
    sha256: str | None,
    progress: bool,
    timeout: float,
) -> bool:
    """Make `dest` a checked copy of `url` (see the module doc); True if it was downloaded by this call."""
    if dest.is_file():
        verify_file(dest, records=dest.parent, nbytes=nbytes, sha256=sha256)
        return False
    where = f"put the file there by hand (download {url} on a machine with network access); expected at {dest}"
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsUnavailable(f"{dest.name} is not cached and {OFFLINE_ENV} is set: {where}")
    incomplete = dest.parent / ".incomplete"
    incomplete.mkdir(parents=True, exist_ok=True)
    with _file_lock(incomplete / f"{dest.name}.lock", dest.name, progress) as locked:
        if dest.is_file():  # another process finished it while this one waited
            verify_file(dest, records=dest.parent, nbytes=nbytes, sha256=sha256)
            return False
        _download_locked(url, dest, incomplete, locked, nbytes, sha256, progress, timeout, where)
    return True


def download(
    url: str,
    dest: str | Path,
    *,
    nbytes: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` to `dest` (locked, atomic, resumable, checked); an existing `dest` is checked, not fetched."""
    dest = Path(dest)
    _fetch(url, dest, nbytes=nbytes, sha256=sha256, progress=progress, timeout=timeout)
    return dest


# ------------------------------------------------------------------------------------- releases
def _torch_hub_copy(groups: list[tuple[str, ...]], rel: Release) -> Path | None:
    """The first complete copy the official torch.hub entry points left in `<torch hub dir>/checkpoints`,
    checked (kind, the table's size and SHA-256, the SHA-256 recorded at its first use); None if none."""
    ckpt = _torch_hub_dir() / "checkpoints"
    for group in groups:
        paths = [ckpt / g for g in group]
        if not all(p.is_file() for p in paths):
            continue
        for p in paths:
            verify_file(
                p,
                records=cache_dir() / ".torch-hub",
                nbytes=rel.nbytes.get(p.name),
                sha256=rel.sha256.get(p.name),
                fix=f"delete {p} (torch.hub's copy) and franca downloads its own",
            )
        log.info("using torch.hub's copy %s", paths[0])
        return paths[0]
    return None


def fetch_release(name: str | Release, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Local path of a released backbone (downloaded on first use); for split archives the first part."""
    rel = name if isinstance(name, Release) else get_release(name)
    if rel.gated:  # granted on request: never downloaded, only looked for where it belongs
        from franca.models.gated import find_gated_file  # lazy: cycle with franca.models.gated

        return find_gated_file(rel)
    folder = cache_dir()
    files = [folder / fname for fname in rel.file_names]
    if not all(p.is_file() for p in files):
        found = _torch_hub_copy(rel.torch_hub_copies, rel)
        if found is not None:
            return found
    fresh = [
        _fetch(
            url,
            path,
            nbytes=rel.nbytes.get(path.name),
            sha256=rel.sha256.get(path.name),
            progress=progress,
            timeout=60.0,
        )
        for url, path in zip(rel.urls(base_url), files)
    ]
    if len(files) > 1 and any(fresh):  # the parts were checked one by one; together they must be one archive
        problem = _gzip_problem(files)
        if problem:
            new = [p for p, f in zip(files, fresh) if f]
            for p in new:
                for q in (p, _record_path(p, folder), _stamp_path(p, folder)):
                    q.unlink(missing_ok=True)
            raise WeightsCorrupt(
                f"the downloaded parts of {rel.name} ({', '.join(p.name for p in files)}) are not one archive: "
                f"{problem}; removed {', '.join(p.name for p in new)}: run again"
            )
    return files[0]


def fetch_rasa(name: str | Release, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Local path of the RASA head released with `name` (downloaded on first use)."""
    rel = name if isinstance(name, Release) else get_release(name)
    url = rel.rasa_url(base_url)
    if url is None:
        raise ValueError(f"no RASA head was released with {rel.name}")
    fname = url.rsplit("/", 1)[-1]
    dest = cache_dir() / fname
    if not dest.is_file():
        found = _torch_hub_copy([(fname,)], rel)
        if found is not None:
            return found
    return download(url, dest, nbytes=rel.nbytes.get(fname), sha256=rel.sha256.get(fname), progress=progress)
