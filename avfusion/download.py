"""Fetch a registered weight source, verify it, convert it once (``avfusion download NAME``).

The journey of a download: the licence is printed (a non-commercial one must be accepted
explicitly) -> every file of the chosen variant is streamed to a hidden work folder beside the
destination -> its byte count is checked against the Content-Length and the pinned size, its digest
against the pinned one -> the converter named by the registry turns the files into what avfusion
loads (safetensors; YuNet stays ONNX) -> that file or folder is renamed into place. Anything that
goes wrong (a refused licence, a cut download, a wrong digest, a converter failure) is one
:class:`DownloadError` line and leaves nothing under the final name and no work files.

Files come from the registry's URLs, or from a mirror: ``base_url`` (or ``$AVFUSION_DOWNLOAD_BASE``)
serves ``{base}/{source name}/{file name}``; ``url`` is the file itself (a single-file variant) or
the folder holding the files.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

from .files import atomic_dir, atomic_path
from .sources import (ENV_DOWNLOAD_BASE, RemoteFile, Source, Variant, avfusion_home, file_digest, get_source,
                      is_complete, parse_digest)
from .version import __version__

PathLike = Union[str, Path]
Log = Callable[[str], None]

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not for the whole file


class DownloadError(ValueError):
    """A download that did not happen or was discarded; the message is one line saying why."""


class LicenceNotAccepted(DownloadError):
    """A non-commercial licence was not accepted explicitly."""


def licence_line(src: Source) -> str:
    lic = src.licence
    nc = " [NON-COMMERCIAL]" if lic.non_commercial else ""
    url = f" ({lic.url})" if lic.url else ""
    return f"{src.name}: licence {lic.spdx}{nc}: {lic.terms}{url}"


def file_urls(src: Source, variant: Variant, f: RemoteFile, url: Optional[str] = None,
              base_url: Optional[str] = None) -> tuple[str, ...]:
    """Where ``f`` is fetched from: ``url``, else ``base_url`` / ``$AVFUSION_DOWNLOAD_BASE``, else the registry."""
    if url:
        return (url,) if len(variant.files) == 1 else (f"{url.rstrip('/')}/{f.name}",)
    base = base_url or os.environ.get(ENV_DOWNLOAD_BASE)
    if base:
        return (f"{base.rstrip('/')}/{src.name}/{f.name}",)
    return f.urls


def expected_digests(src: Source, variant: Variant,
                     given: Optional[Mapping[str, str]] = None) -> dict[str, tuple[str, str]]:
    """``{file name: (algorithm, hex)}`` each file is checked against: the digest given for it
    (key = file name, or ``""`` for the only file of the variant), else the pinned one. A file with
    neither is refused: the registry does not know its digest."""
    given = dict(given or {})
    names = [f.name for f in variant.files]
    if "" in given:
        if len(names) != 1:
            raise DownloadError(f"{src.name}: {len(names)} files ({', '.join(names)}): name the file a "
                                "digest is for (--hash FILE=HEX)")
        given[names[0]] = given.pop("")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise DownloadError(f"{src.name}: no file {', '.join(unknown)} in variant {variant.name!r} "
                            f"(files: {', '.join(names)})")
    out: dict[str, tuple[str, str]] = {}
    missing = []
    for f in variant.files:
        if f.name in given:
            out[f.name] = parse_digest(given[f.name])
        elif f.digest is not None:
            out[f.name] = (f.algorithm, f.digest)
        else:
            missing.append(f)
    if missing:
        what = "; ".join(f"{f.name} ({f.algorithm}; {f.provenance})" if f.provenance else f.name for f in missing)
        raise DownloadError(f"{src.name}: no confirmed digest for {what}; nothing fetched. Check the file's "
                            f"digest at {src.homepage} and pass it: --hash {missing[0].name}=HEX")
    return out


def target_path(src: Source, dest: Optional[PathLike] = None) -> Path:
    """The converted file (or folder) ``src`` is written to: ``dest`` (a folder, or for a file target a
    path with the target's suffix), default ``$AVFUSION_HOME``."""
    if dest is None:
        return avfusion_home() / src.target
    d = Path(dest).expanduser()
    suffix = Path(src.target).suffix
    if suffix and d.suffix == suffix and not d.is_dir():
        return d
    return d / src.target


def download(
    name: str,
    dest: Optional[PathLike] = None,
    *,
    variant: Optional[str] = None,
    url: Optional[str] = None,
    base_url: Optional[str] = None,
    digests: Optional[Mapping[str, str]] = None,
    accept_non_commercial: bool = False,
    force: bool = False,
    log: Optional[Log] = None,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch, verify and convert weight source ``name``; returns the converted file or folder.

    An existing result is kept unless ``force``. Raises :class:`DownloadError` (one line) when the
    licence is not accepted, a digest is unknown or wrong, a download is cut or the converter fails;
    nothing is then left under the final name.
    """
    say: Log = log or (lambda _line: None)
    src = get_source(name)
    chosen = src.variant(variant)
    say(licence_line(src))
    if src.licence.non_commercial and not accept_non_commercial:
        raise LicenceNotAccepted(f"{src.name}: {src.licence.spdx} allows non-commercial use only; nothing "
                                 "fetched. If your use is non-commercial, run again with --accept-non-commercial")
    checks = expected_digests(src, chosen, digests)
    final = target_path(src, dest)
    if not force and (final.exists() and is_complete(name, final)):
        say(f"{src.name}: already present: {final} (--force fetches it again)")
        return final
    for f in chosen.files:
        if checks[f.name] != (f.algorithm, f.digest):
            say(f"{src.name}: {f.name} is checked against the digest given ({' '.join(checks[f.name])})")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.with_name(f".{final.name}.download-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        for f in chosen.files:
            # A digest given by hand pins another file than the registry's: its pinned size goes too.
            pinned = checks[f.name] == (f.algorithm, f.digest)
            _fetch_any(src, f if pinned else dataclasses.replace(f, size=None),
                       file_urls(src, chosen, f, url, base_url), work, checks[f.name], timeout, say)
        say(f"{src.name}: converting ({src.converter}) -> {final}")
        convert(src, chosen, work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"{src.name}: saved {final}")
    return final


# --- fetching -----------------------------------------------------------------------------------


def _fetch_any(src: Source, f: RemoteFile, urls: tuple[str, ...], work: Path, check: tuple[str, str],
               timeout: float, say: Log) -> Path:
    """``f`` from the first of ``urls`` that delivers it whole with the expected digest."""
    failures = []
    for u in urls:
        say(f"{src.name}: fetching {u}" + (f" ({f.size:,} bytes)" if f.size else ""))
        try:
            path = fetch(u, work / f.name, f.size, timeout)
            got = file_digest(path, check[0])
        except DownloadError as e:
            failures.append(f"{u}: {e}")
            continue
        if got != check[1]:
            path.unlink()
            failures.append(f"{u}: {check[0]} mismatch (got {got}, expected {check[1]}); file deleted")
            continue
        return path
    raise DownloadError(f"{src.name}: could not fetch {f.name}: " + "; ".join(failures))


def fetch(url: str, dest: Path, expected_size: Optional[int] = None, timeout: float = TIMEOUT_S) -> Path:
    """Stream ``url`` (http, https, file) to ``dest``, whole or not at all.

    Raises :class:`DownloadError` when the server fails, the body is shorter or longer than its
    Content-Length, or the byte count differs from ``expected_size``.
    """
    req = urllib.request.Request(url, headers={"User-Agent": f"avfusion/{__version__}"})
    try:
        with atomic_path(dest) as tmp, urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
            length = resp.headers.get("Content-Length")
            length = int(length) if length is not None and length.isdigit() else None
            if expected_size is not None and length is not None and length != expected_size:
                raise DownloadError(f"server announces {length:,} bytes, expected {expected_size:,}")
            limit = expected_size if expected_size is not None else length
            n = 0
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                n += len(block)
                if limit is not None and n > limit:
                    raise DownloadError(f"more than the expected {limit:,} bytes")
                out.write(block)
            if length is not None and n != length:
                raise DownloadError(f"download cut: {n:,} of {length:,} bytes")
            if expected_size is not None and n != expected_size:
                raise DownloadError(f"got {n:,} bytes, expected {expected_size:,}")
    except DownloadError:
        raise
    except urllib.error.HTTPError as e:
        raise DownloadError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot connect ({e.reason})") from None
    except http.client.IncompleteRead as e:
        raise DownloadError(f"download cut: {len(e.partial):,} bytes, then the connection closed") from None
    except (http.client.HTTPException, OSError) as e:  # reset connections, timeouts, bad status lines
        raise DownloadError(f"download failed ({type(e).__name__}: {e})") from None
    return dest


# --- converting ---------------------------------------------------------------------------------


def convert(src: Source, variant: Variant, work: Path, final: Path) -> Path:
    """Turn the verified files in ``work`` into ``final`` with ``src``'s converter (one line on failure)."""
    try:
        if src.converter == "copy":
            (f,) = variant.files
            with atomic_path(final) as tmp:
                os.replace(work / f.name, tmp)
        elif src.converter == "emonet":
            (f,) = variant.files
            _save_safetensors(_emonet_state_dict(work / f.name, src), final, src, variant)
        elif src.converter == "face_expert":
            from .encoders.face_expert import convert_face_expert

            (f,) = variant.files
            _save_safetensors(convert_face_expert(work / f.name), final, src, variant)
        elif src.converter == "voice_expert":
            from .encoders.voice_expert import MSP_DIM_CONFIG, convert_voice_expert

            if not (work / "config.json").is_file():  # the published architecture (see the registry)
                (work / "config.json").write_text(json.dumps(MSP_DIM_CONFIG, indent=2))
            hf_config, sd = convert_voice_expert(work)
            with atomic_dir(final) as tmp:
                (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
                _save_safetensors(sd, tmp / "model.safetensors", src, variant)
        else:
            raise ValueError(f"unknown converter {src.converter!r}")
    except Exception as e:  # any converter error becomes one line; nothing was renamed into place
        if isinstance(e, KeyboardInterrupt):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(f"{src.name}: the downloaded file could not be converted ({first})") from None
    return final


def _emonet_state_dict(path: Path, src: Source) -> dict:
    """The official EmoNet ``.pth`` through the EmoNet filter, checked for its class count."""
    from .encoders.emonet import emonet_filter_state_dict
    from .weights import read_weights

    sd = emonet_filter_state_dict(read_weights(path, "EmoNet weight"))
    n = src.option("n_expression")
    head = sd.get("emo_fc_2.3.weight")
    if head is None or (n is not None and head.shape[0] != int(n) + 2):
        got = "no emo_fc_2.3.weight" if head is None else f"{head.shape[0] - 2} expression classes"
        raise ValueError(f"{path.name}: not an EmoNet file with {n} expression classes ({got})")
    return sd


def _save_safetensors(sd: Mapping, path: Path, src: Source, variant: Variant) -> None:
    from safetensors.torch import save_file

    meta = {"avfusion_source": src.name, "avfusion_variant": variant.name, "licence": src.licence.spdx,
            "files": ",".join(f.name for f in variant.files)}
    tensors = {k: v.detach().contiguous() for k, v in sd.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


__all__ = ["download", "fetch", "convert", "licence_line", "file_urls", "expected_digests", "target_path",
           "DownloadError", "LicenceNotAccepted"]
