"""The one registry of weight files avfusion can fetch: name -> where, pinned digest, licence, converter.

``avfusion download NAME`` reads it (:mod:`avfusion.download`), and so does every "weights missing"
message (:func:`require`). An entry says where the published file(s) live, the digest and size they
are pinned to, the licence they come under, which converter turns them into the file avfusion loads
(safetensors; YuNet stays ONNX) and under which name that file lives in ``$AVFUSION_HOME``.

Digests are pinned in the form the publisher gives: ``sha256`` (Git LFS pointers, Hugging Face),
``git-blob-sha1`` (a file committed to a git repository without LFS: its blob id, the sha1 of
``b"blob %d\\0" % size + content``, as ``git ls-tree`` shows it) or ``md5`` (Zenodo). A digest that
could not be confirmed is ``None``: such a file is fetched only with a digest given explicitly
(``avfusion download NAME --hash FILE=HEX``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, Path]

# ./pretrained (relative to the working directory): where a source checkout keeps weight files it
# does not commit; searched after $AVFUSION_HOME.
PRETRAINED_DIR = "pretrained"

ENV_HOME = "AVFUSION_HOME"
ENV_DOWNLOAD_BASE = "AVFUSION_DOWNLOAD_BASE"

ALGORITHMS = ("sha256", "git-blob-sha1", "md5")
# Hex length of each digest: an explicit digest's kind is read from its length.
_HEX_LENGTH = {"sha256": 64, "git-blob-sha1": 40, "md5": 32}


class WeightsMissing(ValueError):
    """A weight file avfusion needs is not on this machine; the message names the command to get it."""


def avfusion_home() -> Path:
    """Where avfusion keeps downloaded files: ``$AVFUSION_HOME``, else ``~/.cache/avfusion``."""
    return Path(os.environ.get(ENV_HOME) or "~/.cache/avfusion").expanduser()


def is_hex_digest(text: str, algorithm: str) -> bool:
    return len(text) == _HEX_LENGTH[algorithm] and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Licence:
    spdx: str  # SPDX identifier (or the closest SPDX-like name)
    terms: str  # one line: what the licence allows, in our words
    non_commercial: bool  # True: `avfusion download` needs --accept-non-commercial
    url: str = ""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, where it lives (mirrors tried in order) and what pins it."""

    name: str  # the published file name (kept while downloading: converters read it by name)
    urls: tuple[str, ...]
    digest: Optional[str]  # lowercase hex; None: not confirmed, needs an explicit digest
    algorithm: str = "sha256"  # one of ALGORITHMS
    size: Optional[int] = None  # bytes; None: not confirmed (the digest still covers the content)
    provenance: str = ""  # where the digest and size were read

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"{self.name}: unknown digest algorithm {self.algorithm!r}; known: {ALGORITHMS}")
        if self.digest is not None and not is_hex_digest(self.digest, self.algorithm):
            raise ValueError(f"{self.name}: {self.digest!r} is not a {self.algorithm} hex digest")


@dataclass(frozen=True)
class Variant:
    """One complete set of published files the converter accepts (e.g. the .pt or the .onnx export)."""

    name: str
    files: tuple[RemoteFile, ...]


@dataclass(frozen=True)
class Source:
    """A registry entry: ``variants[0]`` is what ``avfusion download NAME`` fetches by default."""

    name: str
    description: str
    homepage: str
    licence: Licence
    variants: tuple[Variant, ...]
    # How the fetched files become ``target``: "copy" (kept as published), "emonet" (official .pth
    # -> safetensors through the EmoNet filter), "face_expert" / "voice_expert" (avfusion.encoders.experts).
    converter: str
    target: str  # file name under $AVFUSION_HOME; a folder when it has no suffix
    models: tuple[str, ...] = ()  # model names (or components) that use it
    options: tuple[tuple[str, object], ...] = ()  # converter options, e.g. n_expression

    @property
    def is_folder(self) -> bool:
        return Path(self.target).suffix == ""

    def variant(self, name: Optional[str] = None) -> Variant:
        if name is None:
            return self.variants[0]
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(f"{self.name}: unknown variant {name!r}; known: {', '.join(v.name for v in self.variants)}")

    def option(self, key: str, default: object = None) -> object:
        return dict(self.options).get(key, default)


# --- the registry -------------------------------------------------------------------------------

_EMONET_COMMIT = "49eef301513686d6cfd8304682d3ba7216baf398"  # face-analysis/emonet master
_EMOTIEFF_COMMIT = "f1df0e8548c666d268826e50b7de107fd5553e9d"  # sb-ai-lab/EmotiEffLib main
_HSE_COMMIT = "207ed4981625d1f643e25b4a3014e2eed20a0b46"  # av-savchenko/face-emotion-recognition main
_W2V2_REPO = "https://huggingface.co/audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim/resolve/main/"

_CC_BY_NC_ND = Licence(
    "CC-BY-NC-ND-4.0",
    "attribution; non-commercial use only; no redistribution of modified versions",
    non_commercial=True,
    url="https://creativecommons.org/licenses/by-nc-nd/4.0/",
)


def _emonet(n: int, blob: str) -> Source:
    name = f"emonet_{n}"
    path = f"pretrained/{name}.pth"
    return Source(
        name=name,
        description=f"EmoNet (Toisoul et al. 2021), {n} expression classes + valence/arousal",
        homepage="https://github.com/face-analysis/emonet",
        licence=_CC_BY_NC_ND,
        variants=(Variant("pth", (RemoteFile(
            f"{name}.pth",
            (f"https://raw.githubusercontent.com/face-analysis/emonet/{_EMONET_COMMIT}/{path}",
             f"https://github.com/face-analysis/emonet/raw/master/{path}"),
            blob, "git-blob-sha1",
            # Size not confirmed: the official blob is not in the mirror read here. A third-party
            # Git LFS copy of the files states 56,087,163 (emonet_8) and 56,085,615 (emonet_5)
            # bytes; their difference, 1,548, is exactly the 8- vs 5-class head (3 x 129 floats).
            size=None,
            provenance=f"git blob id of {path} in face-analysis/emonet at {_EMONET_COMMIT[:7]} (git ls-tree)",
        ),)),),
        converter="emonet",
        target=f"{name}.safetensors",
        models=(name, "afew_emonet_video", "av_emonet_wav2vec2") if n == 8 else (name,),
        options=(("n_expression", n),),
    )


def _emotieff(path: str, blob: str) -> RemoteFile:
    return RemoteFile(
        path.rsplit("/", 1)[-1],
        (f"https://raw.githubusercontent.com/sb-ai-lab/EmotiEffLib/{_EMOTIEFF_COMMIT}/{path}",
         f"https://github.com/sb-ai-lab/EmotiEffLib/raw/main/{path}",
         f"https://raw.githubusercontent.com/av-savchenko/face-emotion-recognition/{_HSE_COMMIT}/{path}"),
        blob, "git-blob-sha1",
        size=None,  # not confirmed (the blobs are not in the mirrors read here; README: "16 MB")
        provenance=(f"git blob id of {path} in sb-ai-lab/EmotiEffLib at {_EMOTIEFF_COMMIT[:7]} and "
                    f"av-savchenko/face-emotion-recognition at {_HSE_COMMIT[:7]} (git ls-tree)"),
    )


SOURCES: dict[str, Source] = {
    "yunet": Source(
        name="yunet",
        description="YuNet face detector (OpenCV model zoo), for cv2.FaceDetectorYN",
        homepage="https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet",
        licence=Licence("MIT", "use, copy, modify and redistribute with the copyright notice",
                        non_commercial=False, url="https://opensource.org/license/mit"),
        # The zoo stores the files with Git LFS: github.com/<repo>/raw/ redirects to the file itself,
        # whereas raw.githubusercontent.com would return the LFS pointer (the digest catches that).
        variants=(
            Variant("2026may", (RemoteFile(
                "face_detection_yunet_2026may.onnx",
                ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
                 "face_detection_yunet_2026may.onnx",
                 "https://huggingface.co/opencv/face_detection_yunet/resolve/main/"
                 "face_detection_yunet_2026may.onnx"),
                "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0", "sha256", 229_738,
                provenance="the project's test copy of the file (sha256 and size computed); several "
                           "public projects pin the same sha256 and size",
            ),)),
            Variant("2023mar", (RemoteFile(
                "face_detection_yunet_2023mar.onnx",
                ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
                 "face_detection_yunet_2023mar.onnx",
                 "https://huggingface.co/opencv/face_detection_yunet/resolve/main/"
                 "face_detection_yunet_2023mar.onnx"),
                "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", "sha256", 232_589,
                provenance="Git LFS pointer in opencv/opencv_zoo main (966be4c)",
            ),)),
        ),
        converter="copy",
        target="face_detection_yunet.onnx",
        models=("the yunet face detector",),
    ),
    "emonet_8": _emonet(8, "6833bfdcf8fc761deb7630256a750cf1f7c850c1"),
    "emonet_5": _emonet(5, "61358cb3ea0fe410c01ee4ffff5ed1b49713af98"),
    "enet_b0_8_va_mtl": Source(
        name="enet_b0_8_va_mtl",
        description="EmotiEffLib (HSEmotion) EfficientNet-B0: 8 expression logits + valence + arousal",
        homepage="https://github.com/sb-ai-lab/EmotiEffLib",
        # The repository's only licence file (Apache-2.0) covers everything in it, models/ included;
        # no separate licence is given for the weights.
        licence=Licence("Apache-2.0", "the repository's licence, weights included (no separate model "
                        "licence); trained on AffectNet, whose own terms are research-only: check them "
                        "for commercial use", non_commercial=False,
                        url="https://github.com/sb-ai-lab/EmotiEffLib/blob/main/LICENSE"),
        variants=(
            Variant("pt", (_emotieff("models/affectnet_emotions/enet_b0_8_va_mtl.pt",
                                     "b7223bd1ab092a1b5a42bc04a5f4fbfe4d9f8b9b"),)),
            Variant("onnx", (_emotieff("models/affectnet_emotions/onnx/enet_b0_8_va_mtl.onnx",
                                       "7ce9d6dd5b82b260bc19bfe7822a6ffa1abb6011"),)),
        ),
        converter="face_expert",
        target="enet_b0_8_va_mtl.safetensors",
        models=("enet_b0_8_va_mtl", "av_experts"),
    ),
    "w2v2_msp_dim": Source(
        name="w2v2_msp_dim",
        description="audEERING wav2vec2-large-robust-12-ft-emotion-msp-dim: arousal, dominance, valence",
        homepage="https://huggingface.co/audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim",
        licence=Licence("CC-BY-NC-SA-4.0", "attribution; non-commercial use only; share adaptations "
                        "under the same licence (commercial use: audEERING devAIce licence)",
                        non_commercial=True, url="https://creativecommons.org/licenses/by-nc-sa/4.0/"),
        variants=(
            # Only the weights are fetched: the published config.json changed on the Hub in October
            # 2023 and its bytes were not readable here (no digest to pin), while its architecture
            # is fully known (FORMATS: hidden 1024, 12 layers, ...). The converter writes that
            # architecture (avfusion.encoders.voice_expert.MSP_DIM_CONFIG) beside the weights and
            # loads them into it strictly, so a file of another shape is refused.
            Variant("bin", (
                RemoteFile("pytorch_model.bin", (_W2V2_REPO + "pytorch_model.bin",),
                           "176d9d1ce29a8bddbab44068b9c1c194c51624c7f1812905e01355da58b18816", "sha256",
                           661_436_013,
                           provenance="Hub LFS sha256, as the Hub cache names the blob "
                                      "(models--audeering--...-msp-dim/blobs/176d9d1c...) and as copies' "
                                      "LFS pointers state it, with this size"),
            )),
            Variant("safetensors", (
                # The Hub's model.safetensors (added by the safetensors convert bot, 661 MB): its
                # sha256 and exact size were not readable here.
                RemoteFile("model.safetensors", (_W2V2_REPO + "model.safetensors",), None, "sha256",
                           provenance="not confirmed: pass its Hub LFS sha256 with --hash"),
            )),
        ),
        converter="voice_expert",
        target="w2v2_msp_dim",
        models=("w2v2_msp_dim", "av_experts"),
    ),
}


# --- lookups ------------------------------------------------------------------------------------


def list_sources() -> list[str]:
    return list(SOURCES)


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown weight source {name!r}; known: {', '.join(SOURCES)}") from None


def search_paths(name: str) -> list[Path]:
    """Where :func:`local_path` looks for ``name``'s converted file or folder, in order."""
    target = get_source(name).target
    return [avfusion_home() / target, Path.cwd() / PRETRAINED_DIR / target]


def is_complete(name: str, path: PathLike) -> bool:
    """Whether ``path`` holds ``name``'s converted file (or folder with its config and weights)."""
    p = Path(path)
    if get_source(name).is_folder:
        return (p / "config.json").is_file() and (p / "model.safetensors").is_file()
    return p.is_file()


def local_path(name: str) -> Optional[Path]:
    """The converted file (or folder) of ``name`` if it is on this machine, else None."""
    for p in search_paths(name):
        if is_complete(name, p):
            return p
    return None


def download_command(name: str) -> str:
    """The command that fetches ``name``'s default variant (with the flags it cannot do without)."""
    src = get_source(name)
    flags = " --accept-non-commercial" if src.licence.non_commercial else ""
    flags += "".join(f" --hash {f.name}=HEX" for f in src.variant().files if f.digest is None)
    return f"avfusion download {name}{flags}"


def require(name: str, for_model: Optional[str] = None) -> Path:
    """The converted weights of ``name``; :class:`WeightsMissing` (one line naming the command) if absent."""
    found = local_path(name)
    if found is not None:
        return found
    src = get_source(name)
    where = f" for {for_model}" if for_model and for_model != name else ""
    nc = f" ({src.licence.spdx}: non-commercial use only)" if src.licence.non_commercial else ""
    raise WeightsMissing(f"{name}: pretrained weights{where} not found ({search_paths(name)[0]}); "
                         f"run: {download_command(name)}{nc}")


# --- digests ------------------------------------------------------------------------------------


def parse_digest(text: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a digest given by hand: ``sha256:HEX``, ``md5:HEX``, ``git-blob-sha1:HEX``,
    or bare HEX whose length says which (64 sha256, 40 git blob id, 32 md5)."""
    raw = text.strip().lower()
    algo, _, hexpart = raw.rpartition(":")
    if algo:
        if algo not in ALGORITHMS:
            raise ValueError(f"{text!r}: unknown digest kind {algo!r}; use one of {', '.join(ALGORITHMS)}")
        if not is_hex_digest(hexpart, algo):
            raise ValueError(f"{text!r}: not a {algo} hex digest ({_HEX_LENGTH[algo]} hex digits)")
        return algo, hexpart
    for algo, n in _HEX_LENGTH.items():
        if is_hex_digest(raw, algo):
            return algo, raw
    raise ValueError(f"{text!r}: not a digest (64 hex digits sha256, 40 git blob id, 32 md5)")


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file; ``git-blob-sha1`` is git's blob id (what ``git ls-tree`` shows)."""
    path = Path(path)
    if algorithm == "git-blob-sha1":
        h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    elif algorithm in ("sha256", "md5"):
        h = hashlib.new(algorithm)
    else:
        raise ValueError(f"unknown digest algorithm {algorithm!r}; known: {ALGORITHMS}")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = [
    "SOURCES", "Source", "Variant", "RemoteFile", "Licence", "WeightsMissing",
    "avfusion_home", "list_sources", "get_source", "search_paths", "local_path", "require",
    "download_command", "file_digest", "parse_digest", "is_hex_digest",
    "ENV_HOME", "ENV_DOWNLOAD_BASE", "PRETRAINED_DIR",
]
