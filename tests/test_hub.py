"""Released weights by name: the release table, the download cache (progress, atomic, resume, checks,
offline) and hubconf.py, against a generated release file served on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest
import torch

import franca
from franca.models import releases
from franca.models.hub import WeightsUnavailable, cache_dir, fetch_rasa, fetch_release
from franca.models.releases import Release

ROOT = Path(__file__).resolve().parents[1]


class _Server:
    """Files from a dict path → bytes; honours `Range: bytes=N-`; `cut[path] = n` sends only n bytes once."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        files, cut, requests = self.files, self.cut, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.lstrip("/")
                rng = self.headers.get("Range")
                requests.append((path, rng))
                if path not in files:
                    self.send_error(404)
                    return
                data, start = files[path], 0
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in cut:  # a broken connection: fewer bytes than announced, then close
                    self.wfile.write(body[: cut.pop(path)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
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
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no copy of torch.hub's is found
    monkeypatch.delenv("FRANCA_OFFLINE", raising=False)
    monkeypatch.delenv("FRANCA_BASE_URL", raising=False)
    return tmp_path / "cache"


def _release_bytes(seed: int = 0, depth: int = 2) -> tuple[bytes, torch.nn.Module]:
    """An official-layout release file ({"teacher": {"backbone.…"}}) of a tiny vitt8."""
    torch.manual_seed(seed)
    m = franca.build_backbone("vitt8", depth=depth).eval()
    buf = io.BytesIO()
    torch.save({"teacher": {f"backbone.{k}": v for k, v in m.state_dict().items() if k != "rasa_proj"}}, buf)
    return buf.getvalue(), m


def _add(monkeypatch, rel: Release) -> None:
    monkeypatch.setitem(releases.RELEASES, rel.name, rel)


def test_official_table_names_and_urls():
    """The official file names (In21K with a capital K) and hosts; ViT-g/14 in three tar.gz parts."""
    r = releases.get_release("franca_vitb14_in21k")
    assert r.urls() == ["https://github.com/valeoai/Franca/releases/download/v1.0.0/franca_vitb14_In21K.pth"]
    assert r.rasa_url().endswith("/v1.0.0/franca_vitb14_In21K_rasa.pth") and r.hub == ("franca_vitb14", "IN21K")
    assert releases.get_release("franca_vitl14_laion600m").urls()[0].endswith("v1.0.0/franca_vitl14_Laion600M.pth")
    assert releases.get_release("FRANCA_VITB14_DINOV2_IN21K").file_names == ["franca_vitb14_Dinov2_In21K.pth"]
    g = releases.get_release("franca_vitg14_laion600m").file_names
    assert g == [f"franca_vitg14_Laion600M_chunked.tar.gz.part_{p}" for p in ("aa", "ab", "ac")]
    assert releases.get_release("dinov2_vits14_reg").urls() == [
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"
    ]
    assert releases.hub_release("franca_vitb14", "Dinov2_In21k").name == "franca_vitb14_dinov2_in21k"
    with pytest.raises(ValueError, match="LAION is not|available: "):
        releases.hub_release("franca_vitb14", "LAION")
    with pytest.raises(KeyError, match="known: "):
        releases.get_release("franca_vitx14")
    assert len(franca.releases()) == len(releases.RELEASES) == 26  # 19 Franca/DINOv2, 7 DINOv3 (gated)


def test_by_name_downloads_once_with_progress_then_offline(server, home, monkeypatch, capsys):
    data, src = _release_bytes()
    server.files["v9/tiny_release.pth"] = data
    _add(
        monkeypatch,
        Release(
            "tiny_release",
            "vitt8",
            server.url,
            ("v9/tiny_release.pth",),
            ("x", "Y"),
            "test",
            sha256={"tiny_release.pth": hashlib.sha256(data).hexdigest()},
            nbytes={"tiny_release.pth": len(data)},
        ),
    )
    model = franca.load_backbone("tiny_release")
    err = capsys.readouterr().err
    assert "tiny_release.pth" in err and "100%" in err  # the tqdm bar on stderr
    assert (home / "tiny_release.pth").read_bytes() == data
    assert [p.name for p in (home / ".incomplete").iterdir()] == ["tiny_release.pth.lock"]  # no partial file left
    assert model.weights_label == "tiny_release" and model.n_blocks == 2 and not model.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    server.stop()  # no network any more: the cache serves
    again = franca.load_backbone("tiny_release")
    assert len(server.requests) == 1 and again.weights_label == "tiny_release"


def test_released_rasa_head_by_name_and_hubconf(server, home, monkeypatch):
    """rasa=True (hubconf: use_rasa_head=True) fetches the head released with the weights."""
    data, _ = _release_bytes()
    g = torch.Generator().manual_seed(1)
    head = {f"rasa_head.pre_pos_layers.{i}.weight": torch.randn(2, 192, generator=g) for i in range(2)}
    head["rasa_head.pos_pred.weight"] = torch.randn(2, 192, generator=g)
    buf = io.BytesIO()
    torch.save(head, buf)
    server.files.update({"v9/r.pth": data, "v9/r_rasa.pth": buf.getvalue()})
    _add(
        monkeypatch,
        Release(
            "tiny_rasa", "vitt8", server.url, ("v9/r.pth",), ("franca_vitb14", "TINYR"), "test", rasa="v9/r_rasa.pth"
        ),
    )
    plain = franca.load_backbone("tiny_rasa")
    assert plain.rasa_proj is None
    m = torch.hub.load(str(ROOT), "franca_vitb14", source="local", weights="tinyr", use_rasa_head=True)
    out = m.forward_features(torch.randn(1, 3, 32, 32), use_rasa_head=True)
    assert out["patch_token_rasa"].shape == (1, 16, 192) and m.rasa_proj.shape == (192, 192)
    assert (home / "r_rasa.pth").is_file()
    with pytest.raises(ValueError, match="no RASA head"):
        fetch_rasa("dinov2_vits14")


def test_resume_of_a_broken_download(server, home, monkeypatch):
    data, _ = _release_bytes()
    server.files["r/blob.pth"] = data
    server.cut["r/blob.pth"] = 30_000
    _add(monkeypatch, Release("blob", "vitt8", server.url, ("r/blob.pth",), ("x", "Y"), "test"))
    with pytest.raises(WeightsUnavailable, match="run again to resume"):
        fetch_release("blob", progress=False)
    (part,) = (home / ".incomplete").glob("blob.pth.*.part")  # this process's partial file
    assert part.stat().st_size == 30_000 and not (home / "blob.pth").exists()  # nothing half-written in place
    path = fetch_release("blob", progress=False)
    assert path.read_bytes() == data
    assert server.requests[-1] == ("r/blob.pth", "bytes=30000-")  # only the rest was asked for
    assert not part.exists()


def test_checksum_mismatch_is_refused(server, home, monkeypatch):
    server.files["c/bad.pth"], _ = _release_bytes()
    _add(
        monkeypatch,
        Release("bad", "vitt8", server.url, ("c/bad.pth",), ("x", "Y"), "test", sha256={"bad.pth": "0" * 64}),
    )
    with pytest.raises(WeightsUnavailable, match="SHA-256"):
        fetch_release("bad", progress=False)
    assert not (home / "bad.pth").exists() and not list((home / ".incomplete").glob("bad.pth*.part"))


def test_offline_error_names_url_and_place(home, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("FRANCA_BASE_URL", dead)
    with pytest.raises(WeightsUnavailable) as err:
        franca.load_backbone("franca_vitb14_in21k")
    msg = str(err.value)
    assert f"{dead}/v1.0.0/franca_vitb14_In21K.pth" in msg and str(home / "franca_vitb14_In21K.pth") in msg
    monkeypatch.setenv("FRANCA_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="FRANCA_OFFLINE"):
        franca.load_backbone("dinov2_vits14")
    from franca.cli import main

    assert main(["export", "--model", "dinov2_vits14", "--out", str(home / "x.safetensors")]) == 1


def test_base_url_override_fetches_the_official_path(server, home, monkeypatch):
    data, _ = _release_bytes()
    server.files["v1.0.0/franca_vitb14_In21K.pth"] = data
    monkeypatch.setenv("FRANCA_BASE_URL", server.url)
    path = fetch_release("franca_vitb14_in21k", progress=False)
    assert path == cache_dir() / "franca_vitb14_In21K.pth" and path.read_bytes() == data
    assert server.requests == [("v1.0.0/franca_vitb14_In21K.pth", None)]


def test_split_release_parts_and_hubconf(server, home, monkeypatch, tmp_path):
    """A ViT-g-style release (tar.gz in three parts) by name, and hubconf.py through torch.hub (local)."""
    data, src = _release_bytes(seed=3)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("franca_tiny.pth")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob = raw.getvalue()
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    names = [f"v1/tiny_chunked.tar.gz.part_{p}" for p in ("aa", "ab", "ac")]
    for n, a, b in zip(names, cuts, cuts[1:]):
        server.files[n] = blob[a:b]
    _add(monkeypatch, Release("tiny_split", "vitt8", server.url, tuple(names), ("franca_vitg14", "TINY"), "test"))
    x = torch.randn(2, 3, 48, 64)
    model = torch.hub.load(str(ROOT), "franca_vitg14", source="local", weights="tiny", progress=False)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(x)["x_norm_patchtokens"], src.forward_features(x)["x_norm_patchtokens"]
        )
    parts = [n.split("/")[1] for n in names]
    assert sorted(p.name for p in home.iterdir() if p.is_file()) == sorted(parts + [f"{p}.sha256" for p in parts])
    rand = torch.hub.load(str(ROOT), "franca_vitg14", source="local", weights="tiny", pretrained=False, depth=1)
    assert rand.weights_label == "random init" and rand.n_blocks == 1
    with pytest.raises(ValueError, match="img_size"):
        torch.hub.load(str(ROOT), "franca_vitg14", source="local", weights="tiny", img_size=224)


def test_hubconf_entry_points():
    """The official hub's three Franca entry points and DINOv2's eight, with their keywords."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("franca_hubconf", ROOT / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    names = {"franca_vitb14", "franca_vitl14", "franca_vitg14"} | {
        f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")
    }
    assert names <= set(dir(hub))
    for entry in names:  # every entry point's default weights are in the release table
        import inspect

        default = inspect.signature(getattr(hub, entry)).parameters["weights"].default
        assert releases.hub_release(entry, default).hub[0] == entry
    m = hub.dinov2_vits14_reg(pretrained=False, depth=1)
    assert (m.num_register_tokens, m.interpolate_offset, m.interpolate_antialias, m.ffn, m.img_size) == (
        4,
        0.0,
        True,
        "mlp",
        518,
    )
