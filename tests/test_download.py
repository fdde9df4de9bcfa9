"""``avfusion download``: the registry, fetching from a local HTTP server (127.0.0.1 only), digest and
size checks, the licence gate and the converters, on files written in the published formats.

No real weights: every served file is synthetic; each test pins the registry entry to the digest of
the file it serves (the real pins are checked against real files only where the project has one).
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch

from avfusion import sources
from avfusion.cli.download import main
from avfusion.download import DownloadError, download
from avfusion.files import atomic_dir
from avfusion.sources import SOURCES, WeightsMissing, file_digest, local_path, parse_digest, require

from conftest import synthetic_state_dict  # noqa: E402

# --- a loopback file server ----------------------------------------------------------------------


class FileServer:
    """Serves ``routes[path] = (file, mode)`` on 127.0.0.1; mode "ok", or "cut" (announces the whole
    length, sends half, closes). ``requests`` lists the paths asked for."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[Path, str]] = {}
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold the server thread

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                if self.path not in owner.routes:
                    self.send_error(404)
                    return
                path, mode = owner.routes[self.path]
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data if mode == "ok" else data[: len(data) // 2])
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def serve(self, source: str, path: Path, mode: str = "ok", name: str | None = None) -> str:
        """Serve ``path`` where AVFUSION_DOWNLOAD_BASE points a source's file: /{source}/{name}."""
        route = f"/{source}/{name or path.name}"
        self.routes[route] = (path, mode)
        return self.url + route

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    s = FileServer()
    monkeypatch.setenv(sources.ENV_DOWNLOAD_BASE, s.url)
    for var in ("no_proxy", "NO_PROXY"):  # a proxy of the machine must not see loopback requests
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("AVFUSION_HOME", str(h))
    monkeypatch.chdir(tmp_path)  # ./pretrained of the test, not of the checkout
    return h


def pin(monkeypatch: pytest.MonkeyPatch, name: str, files: dict[str, Path], variant: str | None = None,
        algorithm: str = "sha256") -> None:
    """Pin registry entry ``name``'s variant to the digests and sizes of the files the test serves."""
    src = SOURCES[name]
    chosen = src.variant(variant)
    new_files = tuple(
        dataclasses.replace(f, digest=file_digest(files[f.name], algorithm), algorithm=algorithm,
                            size=files[f.name].stat().st_size) if f.name in files else f
        for f in chosen.files)
    variants = tuple(dataclasses.replace(v, files=new_files) if v.name == chosen.name else v for v in src.variants)
    monkeypatch.setitem(SOURCES, name, dataclasses.replace(src, variants=variants))


def leftovers(folder: Path, keep: str | None = None) -> list[str]:
    """Entries of ``folder`` other than ``keep`` (work folders, partial files)."""
    return sorted(p.name for p in folder.iterdir() if p.name != keep) if folder.exists() else []


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avfusion download: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


# --- published-format files ----------------------------------------------------------------------


def tiny_emonet(n_expression: int = 8):
    from avfusion.encoders.emonet import EmoNet

    return EmoNet(n_expression=n_expression, width=16, num_modules=1, n_blocks=1)


def write_official_emonet(path: Path, n_expression: int = 8) -> dict[str, torch.Tensor]:
    """An official-layout EmoNet file: a plain state dict saved from DataParallel (keys ``module.*``),
    synthetic weights by the parity reference's recipe, at a tiny width."""
    layout = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")]
              for k, v in tiny_emonet(n_expression).state_dict().items()]
    sd = synthetic_state_dict(layout, "module.")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return {k.removeprefix("module."): v for k, v in sd.items()}


@pytest.fixture(scope="module")
def enet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from expert_files import enet_reference, write_enet_onnx, write_enet_pickle

    folder = tmp_path_factory.mktemp("enet")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = enet_reference(seed=3)
        return {"pt": write_enet_pickle(folder / "enet_b0_8_va_mtl.pt", model=net),
                "onnx": write_enet_onnx(folder / "enet_b0_8_va_mtl.onnx", model=net)}
    finally:
        torch.set_num_threads(before)


# --- the registry --------------------------------------------------------------------------------


def test_registry_entries_name_licence_digest_converter_and_target() -> None:
    assert set(SOURCES) == {"yunet", "emonet_8", "emonet_5", "enet_b0_8_va_mtl", "w2v2_msp_dim"}
    for name, src in SOURCES.items():
        assert src.name == name and src.variants and src.licence.spdx and src.licence.terms
        assert src.converter in ("copy", "emonet", "face_expert", "voice_expert")
        for v in src.variants:
            for f in v.files:
                assert f.urls and all(u.startswith("https://") for u in f.urls), f
                assert f.digest is None or sources.is_hex_digest(f.digest, f.algorithm)
    assert [s for s in SOURCES if SOURCES[s].licence.non_commercial] == ["emonet_8", "emonet_5", "w2v2_msp_dim"]
    emonet = SOURCES["emonet_8"].variant().files[0]
    assert (emonet.algorithm, emonet.digest) == ("git-blob-sha1", "6833bfdcf8fc761deb7630256a750cf1f7c850c1")
    # YuNet's table in avfusion.data.faces is read from the registry.
    from avfusion.data import faces

    assert faces.YUNET_FILES["face_detection_yunet_2026may.onnx"][1] == SOURCES["yunet"].variant().files[0].digest
    assert faces.DEFAULT_YUNET_FILE == "face_detection_yunet_2026may.onnx"


def test_digests_git_blob_ids_and_given_digests(tmp_path: Path) -> None:
    # git's own ids: `git hash-object` of an empty file and of "hello\n".
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "hello").write_bytes(b"hello\n")
    assert file_digest(tmp_path / "empty", "git-blob-sha1") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert file_digest(tmp_path / "hello", "git-blob-sha1") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert file_digest(tmp_path / "hello") == hashlib.sha256(b"hello\n").hexdigest()
    assert parse_digest("A" * 64) == ("sha256", "a" * 64)
    assert parse_digest("b" * 40) == ("git-blob-sha1", "b" * 40)
    assert parse_digest("md5:" + "c" * 32) == ("md5", "c" * 32)
    with pytest.raises(ValueError, match="not a digest"):
        parse_digest("1234")


def test_require_names_the_command_in_one_line(home: Path) -> None:
    with pytest.raises(WeightsMissing) as err:
        require("emonet_8", "afew_emonet_video")
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg
    assert msg.startswith("emonet_8: pretrained weights for afew_emonet_video not found")
    assert str(home / "emonet_8.safetensors") in msg
    assert "run: avfusion download emonet_8 --accept-non-commercial" in msg
    assert local_path("emonet_8") is None
    (Path("pretrained")).mkdir()
    (Path("pretrained") / "emonet_8.safetensors").write_bytes(b"x")  # ./pretrained is searched after the home
    assert local_path("emonet_8") == Path.cwd() / "pretrained" / "emonet_8.safetensors"


# --- EmoNet: official .pth -> safetensors --------------------------------------------------------


def test_emonet_pth_is_fetched_verified_converted_and_found(server: FileServer, home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from avfusion.encoders.emonet import load_emonet_checkpoint

    pth = tmp_path / "served" / "emonet_8.pth"
    expected = write_official_emonet(pth)
    server.serve("emonet_8", pth)
    pin(monkeypatch, "emonet_8", {"emonet_8.pth": pth}, algorithm="git-blob-sha1")  # the entry's own kind

    assert main(["emonet_8", "--accept-non-commercial"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("emonet_8: licence CC-BY-NC-ND-4.0 [NON-COMMERCIAL]")
    final = home / "emonet_8.safetensors"
    assert local_path("emonet_8") == final == require("emonet_8")
    assert leftovers(home, keep=final.name) == []
    model = load_emonet_checkpoint(tiny_emonet(), final)  # strict: every key, no module. prefix
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k

    # Present: not fetched again; --force fetches and converts again.
    n = len(server.requests)
    assert main(["emonet_8", "--accept-non-commercial"]) == 0
    assert len(server.requests) == n and "already present" in capsys.readouterr().out
    assert main(["emonet_8", "--accept-non-commercial", "--force"]) == 0
    assert len(server.requests) == n + 1 and leftovers(home, keep=final.name) == []


def test_non_commercial_licence_needs_the_flag(server: FileServer, home: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    pth = tmp_path / "served" / "emonet_5.pth"
    write_official_emonet(pth, n_expression=5)
    server.serve("emonet_5", pth)
    pin(monkeypatch, "emonet_5", {"emonet_5.pth": pth})
    assert main(["emonet_5"]) == 2
    line = one_error_line(capsys)
    assert "non-commercial use only" in line and "--accept-non-commercial" in line
    assert server.requests == [] and not home.exists()  # nothing fetched, nothing written
    # The licence is accepted: the 5-class file converts (its class count is checked).
    assert main(["emonet_5", "--accept-licence"]) == 0
    assert local_path("emonet_5") == home / "emonet_5.safetensors"


def test_wrong_digest_leaves_nothing(server: FileServer, home: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    pth = tmp_path / "served" / "emonet_8.pth"
    write_official_emonet(pth)
    server.serve("emonet_8", pth)
    pin(monkeypatch, "emonet_8", {"emonet_8.pth": pth})
    wrong = "0" * 64
    assert main(["emonet_8", "--accept-non-commercial", "--hash", wrong]) == 2
    line = one_error_line(capsys)
    assert "sha256 mismatch" in line and wrong in line
    assert server.requests == ["/emonet_8/emonet_8.pth"]
    assert leftovers(home) == [] and local_path("emonet_8") is None


def test_cut_download_leaves_nothing(server: FileServer, home: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    pth = tmp_path / "served" / "emonet_8.pth"
    write_official_emonet(pth)
    server.serve("emonet_8", pth, mode="cut")
    pin(monkeypatch, "emonet_8", {"emonet_8.pth": pth})
    assert main(["emonet_8", "--accept-non-commercial"]) == 2
    assert "download cut" in one_error_line(capsys)
    assert leftovers(home) == [] and local_path("emonet_8") is None
    # Without a pinned size (as for the real EmoNet entry) the Content-Length alone catches it.
    src = SOURCES["emonet_8"]
    unsized = dataclasses.replace(src.variants[0], files=(dataclasses.replace(src.variants[0].files[0], size=None),))
    monkeypatch.setitem(SOURCES, "emonet_8", dataclasses.replace(src, variants=(unsized,)))
    with pytest.raises(DownloadError, match="download cut"):
        download("emonet_8", url=server.url + "/emonet_8/emonet_8.pth", accept_non_commercial=True)
    assert leftovers(home) == []


def test_converter_failure_is_one_line_and_leaves_nothing(server: FileServer, home: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    bad = tmp_path / "served" / "emonet_8.pth"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint at all")
    server.serve("emonet_8", bad)
    pin(monkeypatch, "emonet_8", {"emonet_8.pth": bad})
    assert main(["emonet_8", "--accept-non-commercial"]) == 2
    assert "could not be converted" in one_error_line(capsys)
    assert leftovers(home) == []
    # A 5-class file where the 8-class one is expected is refused too.
    five = tmp_path / "served" / "five" / "emonet_8.pth"
    write_official_emonet(five, n_expression=5)
    server.serve("emonet_8", five)
    pin(monkeypatch, "emonet_8", {"emonet_8.pth": five})
    assert main(["emonet_8", "--accept-non-commercial"]) == 2
    assert "5 expression classes" in one_error_line(capsys)
    assert leftovers(home) == []


# --- YuNet: kept as published ---------------------------------------------------------------------


def test_yunet_is_copied_and_found_by_the_detector(server: FileServer, home: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from avfusion.data.faces import resolve_yunet_model

    real = os.environ.get("AVFUSION_TEST_YUNET")
    served = tmp_path / "served" / "face_detection_yunet_2026may.onnx"
    served.parent.mkdir(parents=True)
    served.write_bytes(Path(real).read_bytes() if real else b"pretend onnx")
    server.serve("yunet", served)
    if not real:  # with the real file, the registry's own sha256 and size are what is checked
        pin(monkeypatch, "yunet", {served.name: served})
    assert main(["yunet"]) == 0
    assert "licence MIT" in capsys.readouterr().out
    assert local_path("yunet") == home / "face_detection_yunet.onnx" == resolve_yunet_model()
    assert file_digest(home / "face_detection_yunet.onnx") == file_digest(served)
    assert leftovers(home, keep="face_detection_yunet.onnx") == []
    # --url (a mirror's file) and --dest (a folder, or a file path with the target's suffix).
    url = server.serve("mirror", served, name="yunet.onnx")
    assert main(["yunet", "--url", url, "--dest", str(tmp_path / "elsewhere" / "det.onnx")]) == 0
    assert server.requests[-1] == "/mirror/yunet.onnx"
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["det.onnx"]


# --- the face expert: pickled whole model and ONNX export ----------------------------------------


@pytest.mark.parametrize("variant", ["pt", "onnx"])
def test_face_expert_published_files_convert(variant: str, enet_files: dict[str, Path], server: FileServer,
                                             home: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    from safetensors.torch import load_file

    from avfusion.encoders.face_expert import convert_face_expert

    served = enet_files[variant]
    server.serve("enet_b0_8_va_mtl", served)
    pin(monkeypatch, "enet_b0_8_va_mtl", {served.name: served}, variant=variant, algorithm="git-blob-sha1")
    args = ["enet_b0_8_va_mtl"] + (["--variant", variant] if variant != "pt" else [])
    assert main(args) == 0  # Apache-2.0: no licence flag needed
    final = home / "enet_b0_8_va_mtl.safetensors"
    assert local_path("enet_b0_8_va_mtl") == final and leftovers(home, keep=final.name) == []
    got, want = load_file(str(final)), convert_face_expert(served)
    assert len(got) == 360 and got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


# --- the voice expert: audEERING folder -> config.json + model.safetensors -----------------------


@pytest.mark.parametrize("fmt,weight_norm", [("safetensors", "new"), ("bin", "old")])
def test_voice_expert_folder_converts(fmt: str, weight_norm: str, server: FileServer, home: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys, one_thread) -> None:
    pytest.importorskip("avfusion.encoders.voice_expert")
    from safetensors.torch import load_file

    from avfusion.encoders.voice_expert import convert_voice_expert
    from expert_files import write_w2v2_folder

    import avfusion.encoders.voice_expert as voice_expert

    folder = write_w2v2_folder(tmp_path / "served", seed=1, weight_norm=weight_norm, fmt=fmt, tiny=True)
    weights = folder / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    server.serve("w2v2_msp_dim", weights)  # only the weights: avfusion writes the architecture's config
    # The registry's architecture is the published one; these synthetic weights are the tiny layout.
    monkeypatch.setattr(voice_expert, "MSP_DIM_CONFIG", json.loads((folder / "config.json").read_text()))
    argv = ["w2v2_msp_dim", "--accept-non-commercial", "--variant", fmt]
    if fmt == "safetensors":  # no confirmed digest in the registry: refused unless one is given
        assert main(argv) == 2
        assert "no confirmed digest for model.safetensors" in one_error_line(capsys)
        assert server.requests == [] and not home.exists()
        argv += ["--hash", f"model.safetensors={file_digest(weights)}"]
    else:
        pin(monkeypatch, "w2v2_msp_dim", {weights.name: weights}, variant=fmt)
    assert main(argv) == 0
    final = home / "w2v2_msp_dim"
    assert local_path("w2v2_msp_dim") == final == require("w2v2_msp_dim")
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors"]
    assert leftovers(home, keep="w2v2_msp_dim") == []
    hf_config, sd = convert_voice_expert(folder)
    assert json.loads((final / "config.json").read_text()) == json.loads(json.dumps(hf_config))
    got = load_file(str(final / "model.safetensors"))
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_the_listing_says_which_digests_are_pinned(home: Path, capsys) -> None:
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "w2v2_msp_dim" in listing and "no pinned digest for model.safetensors" in listing


# --- atomic folders -------------------------------------------------------------------------------


def test_atomic_dir_replaces_a_folder_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("writer failed")
    assert (final / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(final) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
