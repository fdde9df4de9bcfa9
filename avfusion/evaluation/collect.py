"""A model over a loader of labelled windows, stitched per video: training validation and
``avfusion evaluate`` go through :func:`predict_loader`.

Each batch row (one window of ``T`` frames) becomes a small dict (:func:`~avfusion.inference.
aggregate.batch_rows`); with an Accelerator every process's rows are gathered
(``gather_for_metrics``: the duplicates that even out the last batch are dropped); the one
stitcher, :class:`~avfusion.inference.aggregate.PredictionCollector`, puts each window's
predictions on its video's frames.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch

from ..inference.aggregate import OVERLAP_POLICIES, PredictionCollector, VideoPrediction, batch_rows
from ..metrics import moving_average

MASKABLE = ("audio", "video")


def mask_modality(batch: Mapping[str, Any], which: Optional[str],
                  stretch: Optional[Mapping[str, tuple[int, int]]] = None) -> dict[str, Any]:
    """A copy of ``batch`` whose ``which`` modality ("audio" or "video") is marked absent for the
    model, as when a video has no audio track or no face is found: measures how an audio-visual
    model copes with one sense missing. ``stretch`` (video id -> ``[start, end)`` frames) hides it
    over that stretch of each video only (the face blanked, the audio silenced for a while). The
    batch's own masks (what is scored) are not changed."""
    out = dict(batch)
    if which is None:
        return out
    if which not in MASKABLE:
        raise ValueError(f"mask must be one of {MASKABLE}, got {which!r}")
    if stretch is None:
        if which == "audio":
            out["audio_valid"] = torch.zeros_like(batch["audio_valid"], dtype=torch.bool)
        else:
            out["face_mask"] = torch.zeros_like(batch["face_mask"], dtype=torch.bool)
        return out
    idx = batch["frame_indices"]
    lo = torch.tensor([stretch.get(str(v), (0, 0))[0] for v in batch["video_id"]], device=idx.device)[:, None]
    hi = torch.tensor([stretch.get(str(v), (0, 0))[1] for v in batch["video_id"]], device=idx.device)[:, None]
    hide = (idx >= lo) & (idx < hi)
    if which == "audio":
        frames = batch.get("audio_frames")
        if frames is None:
            frames = batch["audio_valid"][:, None].expand_as(idx)
        out["audio_frames"] = frames.bool() & ~hide
    else:
        out["face_mask"] = batch["face_mask"].bool() & ~hide
    return out


def _to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    n_frames: Optional[Mapping[str, int]] = None,
    accelerator: Any = None,
    device: torch.device | str | None = None,
    overlap: str = "error",
    progress: bool = False,
    require_labelled: bool = True,
    mask: Optional[str] = None,
    stretch: Optional[Mapping[str, tuple[int, int]]] = None,
) -> dict[str, VideoPrediction]:
    """Run ``model`` (an :class:`~avfusion.model.AVModel`, or one an Accelerator prepared) over
    every batch and stitch per video (``overlap``: see :class:`PredictionCollector`). The model runs
    in eval mode and is put back in the mode it was in.

    With an ``accelerator`` the loader must be prepared by it: each process predicts its share and
    ``gather_for_metrics`` hands every process all rows (the duplicates that even batches add at
    the end are dropped), so every process returns the same result.
    ``mask`` ("audio" | "video") hides that modality from the model (:func:`mask_modality`), over
    ``stretch`` (video id -> ``[start, end)``) only when given.
    """
    net = accelerator.unwrap_model(model) if accelerator is not None else model
    was_training = net.training
    net.eval()
    if device is None:
        device = accelerator.device if accelerator is not None else next(net.parameters()).device
    collector = PredictionCollector(n_frames, overlap=overlap)
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="evaluating", unit="batch")
    for batch in it:
        batch = _to_device(batch, device)
        out = net.forward_batch(mask_modality(batch, mask, stretch))
        rows = batch_rows(batch, out)
        if accelerator is not None:
            rows = accelerator.gather_for_metrics(rows, use_gather_object=True)
        collector.add_rows(rows)
    net.train(was_training)
    return collector.result(require_labelled=require_labelled)


def smooth_predictions(video: VideoPrediction, window: int) -> np.ndarray:
    """``(N, 2)`` centred moving average of a video's predictions over its predicted frames."""
    return moving_average(np.nan_to_num(video.pred), window, valid=video.counts > 0)


__all__ = ["VideoPrediction", "batch_rows", "PredictionCollector", "predict_loader", "smooth_predictions",
           "OVERLAP_POLICIES", "mask_modality", "MASKABLE"]
