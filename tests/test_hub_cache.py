"""The weights cache cannot be poisoned: broken downloads served from 127.0.0.1 (two processes at once, an HTML
page, no length, a lying length, 416, a wrong range start, a split archive with a short part), a cached file
damaged later, and the copy torch.hub already keeps, used with no network."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import franca
from franca.models import hub, releases
from franca.models.hub import WeightsUnavailable, fetch_release
from franca.models.releases import Release

HTML = b"<!DOCTYPE html>\n<html><head><title>429 Too Many Requests</title></head><body>slow down</body></html>\n"


class _Server:
    """Files from a dict path → bytes, served as real servers do (Range → 206, a start past the end → 416),
    or broken as `mode[path]` says: "html", "nolength", "short" (Content-Length 1000 bytes short, and those
    bytes only), "wrongstart" (a 206 that starts at 0 whatever was asked), "hold" (half the body, then wait
    for `gate`; a second request for the path opens the gate). `cut[path] = n` ends the next body after n bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode: dict[str, str] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.gate = threading.Event()
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path, rng = self.path.lstrip("/"), self.headers.get("Range")
                srv.requests.append((path, rng))
                if sum(p == path for p, _ in srv.requests) > 1:
                    srv.gate.set()
                mode, data = srv.mode.get(path), srv.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                if mode == "html":
                    self._send(200, HTML, {"Content-Type": "text/html; charset=utf-8"})
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if rng and start >= len(data):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                if rng and mode == "wrongstart":
                    start = 0
                body, head = data[start:], {}
                if rng:
                    head["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                if mode == "short":
                    body = body[:-1000]
                if mode != "nolength":
                    head["Content-Length"] = str(len(body))
                if path in srv.cut:
                    body = body[: srv.cut.pop(path)]
                self._send(206 if rng else 200, body, head, hold=mode == "hold")

            def _send(self, code: int, body: bytes, head: dict[str, str], hold: bool = False) -> None:
                self.send_response(code)
                for k, v in head.items():
                    self.send_header(k, v)
                self.end_headers()
                if hold:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    srv.gate.wait(60)
                    body = body[len(body) // 2 :]
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True  # HTTP/1.0: the end of the connection ends a body with no length

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FRANCA_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub's folder: empty unless a test fills it
    monkeypatch.delenv("FRANCA_OFFLINE", raising=False)
    monkeypatch.delenv("FRANCA_BASE_URL", raising=False)
    return tmp_path / "cache"


def _pth(n: int = 40_000) -> bytes:
    """A small torch .pth (a zip archive) of about 4n bytes."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(n, dtype=torch.int32)}, buf)
    return buf.getvalue()


def _release_pth(seed: int = 0) -> tuple[bytes, torch.nn.Module]:
    """An official-layout release file of a one-block vitt8."""
    torch.manual_seed(seed)
    m = franca.build_backbone("vitt8", depth=1).eval()
    buf = io.BytesIO()
    torch.save({"teacher": {f"backbone.{k}": v for k, v in m.state_dict().items() if k != "rasa_proj"}}, buf)
    return buf.getvalue(), m


def _one(monkeypatch, server: _Server, name: str, data: bytes, mode: str | None = None) -> Release:
    path = f"v9/{name}.pth"
    server.files[path] = data
    if mode:
        server.mode[path] = mode
    rel = Release(name, "vitt8", server.url, (path,), ("x", "Y"), "test")
    monkeypatch.setitem(releases.RELEASES, name, rel)
    return rel


def _left(home: Path) -> list[str]:
    """Every file in the cache and its partial-download folder, but the lock files."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


# ---------------------------------------------------------------------------------------- item 1
_CHILD = textwrap.dedent(
    """
    import sys
    import torch.hub  # imported before "ready", so that the fetch starts at once
    from franca.models.hub import fetch_release
    from franca.models.releases import Release
    rel = Release("race", "vitt8", sys.argv[1], ("v9/race.pth",), ("x", "Y"), "test")
    print("ready", flush=True)
    print(fetch_release(rel, progress=True), flush=True)
    """
)


def test_two_processes_fetching_one_file_share_one_download(server, home, tmp_path):
    """Two processes (torchrun ranks) fetch one release at once: the second waits on the lock, then uses the
    file the first cached. (Before: both wrote one `.incomplete` file, the cache held 1.5× the bytes and the
    second process died with a bare FileNotFoundError.)"""
    data = _pth(60_000)
    server.files["v9/race.pth"], server.mode["v9/race.pth"] = data, "hold"
    env = {**os.environ, "FRANCA_HOME": str(home), "TORCH_HOME": str(tmp_path / "torch")}
    env.pop("FRANCA_OFFLINE", None)

    def start() -> subprocess.Popen:
        cmd = [sys.executable, "-c", _CHILD, server.url]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    deadline = time.monotonic() + 120
    while not server.requests and time.monotonic() < deadline:  # the first process is mid-body (held)
        time.sleep(0.05)
    second = start()
    assert second.stdout.readline().strip() == "ready"
    time.sleep(2.0)  # the second process is at the lock by now (an unlocked one has sent its request)
    server.gate.set()
    out = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1][-2000:] for o in out]
    assert out[0][0].split()[-1] == out[1][0].split()[-1] == str(home / "race.pth")
    assert (home / "race.pth").read_bytes() == data
    assert server.requests == [("v9/race.pth", None)]  # one download, not two
    assert "another process is downloading it; waiting" in out[1][1]
    assert _left(home) == [".checked/race.pth.json", "race.pth", "race.pth.sha256"]


# ---------------------------------------------------------------------------------------- item 2
def test_an_html_page_is_never_cached(server, home, monkeypatch, tmp_path):
    """A 200 whose body is a rate-limit page is refused before anything is written; once the server is fine,
    the next call downloads the file."""
    data, src = _release_pth()
    rel = _one(monkeypatch, server, "page", data, mode="html")
    with pytest.raises(WeightsUnavailable) as err:
        fetch_release("page", progress=False)
    msg = str(err.value)
    assert f"{server.url}/v9/page.pth sent an HTML page" in msg and "429 Too Many Requests" in msg
    assert "text/html" in msg and "nothing was cached" in msg and "\n" not in msg
    assert _left(home) == []
    server.mode.clear()  # the server is fine again
    model = franca.load_backbone("page")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    assert fetch_release(rel).read_bytes() == data


def test_an_html_file_already_in_the_cache_says_delete_it(home, monkeypatch, tmp_path):
    """A page cached by an older version (or put there by hand) is named, with what to do."""
    rel = Release("old", "vitt8", "http://127.0.0.1:9", ("v9/old.pth",), ("x", "Y"), "test")
    monkeypatch.setitem(releases.RELEASES, "old", rel)
    home.mkdir(parents=True)
    (home / "old.pth").write_bytes(HTML)
    with pytest.raises(WeightsUnavailable) as err:
        franca.load_backbone("old")
    msg = str(err.value)
    assert f"delete {home / 'old.pth'} to download it again" in msg and "an HTML page" in msg
    assert "may run code" not in msg
    from franca.cli import main

    assert main(["export", "--model", "old", "--out", str(tmp_path / "x.safetensors")]) == 1
    # the same page passed as a weights file is called what it is, not "a file that may run code"
    with pytest.raises(ValueError, match="not a torch checkpoint") as err:
        franca.load_backbone("vitt8", weights=home / "old.pth")
    assert "may run code" not in str(err.value)


# ---------------------------------------------------------------------------------------- item 3
def test_no_content_length(server, home, monkeypatch):
    """With no length the body must still be a complete torch archive: a cut body is refused, not cached."""
    data = _pth()
    _one(monkeypatch, server, "nolen", data, mode="nolength")
    server.cut["v9/nolen.pth"] = len(data) // 2
    with pytest.raises(WeightsUnavailable, match=r"is not a valid nolen\.pth: not a complete zip archive"):
        fetch_release("nolen", progress=False)
    assert _left(home) == []
    assert fetch_release("nolen", progress=False).read_bytes() == data  # a whole body with no length is fine


def test_a_short_content_length_is_refused(server, home, monkeypatch):
    """A server that announces and sends 1000 bytes too few: the size matches what it said, the archive
    does not."""
    _one(monkeypatch, server, "short", _pth(), mode="short")
    with pytest.raises(WeightsUnavailable, match=r"short\.pth: not a complete zip archive.*removed it"):
        fetch_release("short", progress=False)
    assert _left(home) == []


def test_416_checks_the_partial_file_instead_of_trusting_it(server, home, monkeypatch):
    """A partial file as long as the whole file gets a 416: a wrong one is dropped and the file downloaded from
    zero; a right one is checked and kept without downloading again."""
    data = _pth()
    _one(monkeypatch, server, "full", data)
    (home / ".incomplete").mkdir(parents=True)
    (home / ".incomplete" / "full.pth").write_bytes(bytes(len(data)))  # an older version's partial file
    assert fetch_release("full", progress=False).read_bytes() == data
    assert server.requests == [("v9/full.pth", f"bytes={len(data)}-"), ("v9/full.pth", None)]
    (home / "full.pth").unlink()
    (home / ".incomplete" / "full.pth").write_bytes(data)
    server.requests.clear()
    assert fetch_release("full", progress=False).read_bytes() == data
    assert server.requests == [("v9/full.pth", f"bytes={len(data)}-")]  # the 416 only
    assert _left(home) == [".checked/full.pth.json", "full.pth", "full.pth.sha256"]


def test_a_206_that_starts_elsewhere_restarts_from_zero(server, home, monkeypatch):
    """Asked for bytes 30000-, the server sends the file from byte 0 as a 206: appending would splice the file
    onto its own start; the download starts again from zero instead."""
    data = _pth()
    _one(monkeypatch, server, "splice", data, mode="wrongstart")
    (home / ".incomplete").mkdir(parents=True)
    (home / ".incomplete" / "splice.pth").write_bytes(data[:30_000])
    assert fetch_release("splice", progress=False).read_bytes() == data
    assert server.requests == [("v9/splice.pth", "bytes=30000-"), ("v9/splice.pth", None)]


def test_a_split_archive_with_a_short_part_is_refused(server, home, monkeypatch):
    """The ViT-g parts: the middle one, 1000 bytes short with a matching length, passes alone; the parts
    together are not one gzip stream, so what was downloaded is removed."""
    raw = io.BytesIO()
    payload = os.urandom(60_000)  # incompressible, as weights are
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("w.pth")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    blob = raw.getvalue()
    names = [f"v1/g_chunked.tar.gz.part_{p}" for p in ("aa", "ab", "ac")]
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    for n, a, b in zip(names, cuts, cuts[1:]):
        server.files[n] = blob[a:b]
    server.mode[names[1]] = "short"
    monkeypatch.setitem(
        releases.RELEASES, "g", Release("g", "vitt8", server.url, tuple(names), ("franca_vitg14", "G"), "test")
    )
    with pytest.raises(WeightsUnavailable, match=r"are not one archive: .*removed .*part_aa, .*part_ab, .*part_ac"):
        fetch_release("g", progress=False)
    assert _left(home) == []
    server.mode.clear()
    assert fetch_release("g", progress=False) == home / "g_chunked.tar.gz.part_aa"
    assert b"".join((home / n.split("/")[1]).read_bytes() for n in names) == blob


def test_the_first_bytes_each_kind_must_have():
    """A .pth is a zip archive, the first part of the split archive gzip, a later part anything but text."""
    assert hub.file_kind("franca_vitb14_In21K.pth") == "zip"
    assert hub.file_kind("franca_vitg14_Laion600M_chunked.tar.gz.part_aa") == "gzip"
    assert hub.file_kind("franca_vitg14_Laion600M_chunked.tar.gz.part_ab") == "binary"
    assert hub._head_problem(_pth(10), "zip") is None and hub._head_problem(b"\x1f\x8b\x08\x00", "gzip") is None
    assert "an HTML page" in hub._head_problem(HTML, "binary")
    assert "JSON text" in hub._head_problem(b' {"message": "API rate limit exceeded"}', "zip")
    assert "text" in hub._head_problem("Слишком много запросов".encode() * 40, "binary")
    assert hub._head_problem(os.urandom(4096), "binary") is None


# ---------------------------------------------------------------------------------------- item 4
def test_a_cached_file_damaged_later_is_caught(server, home, monkeypatch):
    """4 KB overwritten in the middle of a cached file (same size, the mtime put back): the next load names the
    file and says to delete it. An unchanged file is not hashed again at load (its check is remembered)."""
    data, _ = _release_pth()
    _one(monkeypatch, server, "flip", data)
    franca.load_backbone("flip", progress=False)
    path = home / "flip.pth"
    hashed = []
    real = hub._sha256
    monkeypatch.setattr(hub, "_sha256", lambda p: hashed.append(p) or real(p))
    franca.load_backbone("flip", progress=False)
    assert hashed == []  # remembered: size, inode, mtime and ctime unchanged
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(len(data) // 2)
        f.write(bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 4096]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == len(data)
    with pytest.raises(WeightsUnavailable) as err:
        franca.load_backbone("flip", progress=False)
    msg = str(err.value)
    assert f"{path} changed since it was downloaded" in msg and f"delete {path} to download it again" in msg
    assert hashed == [path] and len(server.requests) == 1
    assert (home / "flip.pth.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  flip.pth\n"
    path.unlink()  # as the message says
    assert fetch_release("flip", progress=False).read_bytes() == data and len(server.requests) == 2


# ---------------------------------------------------------------------------------------- item 5
def test_the_copy_torch_hub_keeps_is_used_without_network(home, monkeypatch, tmp_path):
    """`torch.hub.load('facebookresearch/dinov2', …)` left `<hub>/checkpoints/dinov2_vits14_pretrain.pth`, the
    official Franca hub the `.pth` extracted from the ViT-g parts: both are used in place, offline."""
    monkeypatch.setenv("FRANCA_OFFLINE", "1")
    monkeypatch.setenv("FRANCA_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    data, src = _release_pth(seed=2)
    (ckpt / "dinov2_vits14_pretrain.pth").write_bytes(data)
    rel = releases.get_release("dinov2_vits14")
    monkeypatch.setitem(releases.RELEASES, "dinov2_vits14", dataclasses.replace(rel, size="vitt8"))
    model = franca.load_backbone("dinov2_vits14")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    assert model.weights_label == "dinov2_vits14" and not (home / "dinov2_vits14_pretrain.pth").exists()
    assert fetch_release("dinov2_vits14") == ckpt / "dinov2_vits14_pretrain.pth"
    record = home / ".torch-hub" / "dinov2_vits14_pretrain.pth.sha256"  # recorded at first use, in our cache
    assert record.read_text().split()[0] == hashlib.sha256(data).hexdigest()
    g = releases.get_release("franca_vitg14_laion600m")
    monkeypatch.setitem(releases.RELEASES, g.name, dataclasses.replace(g, size="vitt8"))
    (ckpt / "franca_vitg14_Laion600M.pth").write_bytes(data)  # the official hub's extracted ViT-g file
    assert fetch_release(g) == ckpt / "franca_vitg14_Laion600M.pth"
    (ckpt / "franca_vitg14_Laion600M.pth").unlink()
    raw = io.BytesIO()  # the official hub's downloaded ViT-g parts
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("franca_vitg14_Laion600M.pth")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob, parts = raw.getvalue(), g.torch_hub_copies[1]
    (ckpt / "parts").mkdir()
    for i, name in enumerate(parts):
        (ckpt / name).write_bytes(blob[i * len(blob) // 3 : (i + 1) * len(blob) // 3])
    assert fetch_release(g) == ckpt / parts[0]
    with torch.no_grad():
        torch.testing.assert_close(franca.load_backbone(g.name)(x), src(x))
    (ckpt / "franca_vitb14_In21K.pth").write_bytes(HTML)  # a broken copy is named, not used or skipped
    with pytest.raises(WeightsUnavailable, match=rf"{ckpt / 'franca_vitb14_In21K.pth'} is not a released weights"):
        fetch_release("franca_vitb14_in21k")


def test_without_working_locks_each_process_downloads_on_its_own(server, home, monkeypatch):
    """Where flock fails (a network file system without locks) a download still works, atomically, and leaves
    no partial file that another process could take."""
    import errno
    import fcntl

    def no_lock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_lock)
    data = _pth()
    _one(monkeypatch, server, "nolock", data)
    server.cut["v9/nolock.pth"] = 30_000
    with pytest.raises(WeightsUnavailable, match=r"stopped at 30000 of \d+ bytes; run again$"):
        fetch_release("nolock", progress=False)
    assert _left(home) == []
    assert fetch_release("nolock", progress=False).read_bytes() == data
    assert server.requests[-1] == ("v9/nolock.pth", None)


def test_a_partial_file_of_another_host_is_taken_only_when_stale(server, home, monkeypatch):
    """A partial file another host is writing (a shared cache whose locks do not reach across hosts) is left
    alone; one untouched for STALE_S is resumed."""
    data = _pth()
    _one(monkeypatch, server, "shared", data)
    other = home / ".incomplete" / "shared.pth.otherhost-123.part"
    other.parent.mkdir(parents=True)
    other.write_bytes(data[:30_000])
    assert fetch_release("shared", progress=False).read_bytes() == data
    assert server.requests == [("v9/shared.pth", None)] and other.stat().st_size == 30_000
    (home / "shared.pth").unlink()
    old = time.time() - hub.STALE_S - 60
    os.utime(other, (old, old))
    assert fetch_release("shared", progress=False).read_bytes() == data
    assert server.requests[-1] == ("v9/shared.pth", "bytes=30000-") and not other.exists()
