"""The training loop with Accelerate: train one epoch, evaluate over a whole split, fit, cross-validate.

One :class:`accelerate.Accelerator` runs everything (one CPU, several processes, GPUs, mixed
precision). What makes a run exactly resumable:

* the data order of epoch ``e`` is a permutation seeded by ``(seed, e)`` (:class:`EpochSampler`),
  the same in every process and in every run, and the DataLoader draws its worker seeds from its
  own generator, re-seeded per epoch, never from the global RNG;
* ``accelerator.save_state`` stores model, optimizer, scheduler, the accumulation counter and every
  process's RNG states; :class:`TrainState` (``trainer_state.json`` beside them) stores the step,
  the epoch and how many batches of it were consumed, which ``skip_first_batches`` skips on resume.

Exact means bit-identical weights (tested, CPU, float32). One limit: with ``num_workers > 0`` *and*
random augmentation, a resume in the middle of an epoch replays that epoch's data order but not its
augmentation draws (fresh workers start their RNG streams at the first batch not skipped).

Validation goes through the one evaluation path (:func:`avfusion.evaluation.predict_loader`: rows
of every process gathered with ``gather_for_metrics``, windows put back on frames, overlapping
windows averaged only when ``data.eval_stride`` asks for them) and
:func:`avfusion.evaluation.split_metrics`, so the figures logged here are those ``avfusion evaluate``
computes for the exported model on the same split.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..caching import use_feature_cache
from ..data.build import Datasets, build_datasets, serving_for
from ..files import write_text_atomic
from ..evaluation import predict_loader, split_metrics
from ..fusion import fit_mix, fit_mix_decay
from ..model import AVModel
from ..runlock import (OWNER_NAME, RunFolderError, changes_text, check_output_folder, identity_changes, read_owner,
                       run_lock, write_owner)
from .checkpoint import (STATE_FILE, TrainState, checkpoint_dirs, export_model, resolve_resume, save_checkpoint,
                         verify_checkpoint, write_csv)
from .experiment import ExperimentConfig, build_model, experiment_to_dict, with_fold
from .optim import build_loss_fn, build_optimizer, build_scheduler

# The metric that picks the best epoch (docs/FORMATS.md: Aff-Wild2's P_VA is the mean of the two CCCs).
SELECT_METRIC = "ccc_mean"


class EpochSampler(Sampler[int]):
    """Shuffled indices, a fresh permutation per epoch seeded by ``(seed, epoch)``.

    Unlike a RandomSampler with a running generator, epoch ``e``'s order does not depend on what
    ran before it, so a resumed run replays it exactly. (No ``generator`` attribute on purpose:
    Accelerate would otherwise re-synchronise it across processes behind our back.)
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _mix(seed: int, epoch: int) -> int:
    # Distinct, well-spread seeds for (seed, epoch) pairs (seed + epoch would make seed 1 epoch 0
    # replay seed 0 epoch 1).
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ------------------------------------------------------------------------------------------------
# Accelerator and data loaders


def make_accelerator(cfg: ExperimentConfig, log: bool = True) -> Any:
    """The run's Accelerator: precision, accumulation, TensorBoard under ``<output_dir>/tensorboard``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    out = Path(cfg.output_dir)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard"))
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        cpu=cfg.train.cpu,
        log_with="tensorboard" if log else None,
        project_config=project,
    )


def make_loader(dataset: Dataset, batch_size: int, collate_fn: Optional[Callable], train: bool,
                seed: int, num_workers: int = 0) -> tuple[DataLoader, EpochSampler]:
    """A DataLoader with an :class:`EpochSampler` (shuffled when ``train``) and its own generator."""
    sampler = EpochSampler(len(dataset), seed, shuffle=train)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
        num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
        persistent_workers=False, drop_last=False,
    )
    return loader, sampler


def _seed_epoch(loader: Any, sampler: EpochSampler, seed: int, epoch: int) -> None:
    sampler.set_epoch(epoch)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    gen = getattr(loader, "generator", None)
    if gen is not None:
        gen.manual_seed(_mix(seed + 1, epoch))


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``AVModel.forward`` a batch provides (raw or cached features)."""
    return AVModel.inputs_from_batch(batch)


def predictions(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T, 2)`` valence, arousal from the model's output dict."""
    return torch.stack([out["valence"], out["arousal"]], dim=-1)


def targets(batch: dict[str, Any]) -> torch.Tensor:
    """``(B, T, 2)`` labels; values at masked frames are meaningless (losses/metrics skip them)."""
    return torch.stack([batch["valence"], batch["arousal"]], dim=-1).float()


def training_loss(loss_fn: nn.Module, out: dict[str, Any], batch: dict[str, Any],
                  weights: tuple[float, float] = (1.0, 0.0)) -> torch.Tensor:
    """``weights[0]`` times the loss of the model's output plus ``weights[1]`` times the mean loss of
    a gated fusion's own heads (``out["aux"]``: name -> (prediction, where present))."""
    target, mask = targets(batch), batch["mask"]
    aux = out.get("aux") or {}
    final_w, aux_w = weights if aux else (1.0, 0.0)
    terms = []
    if final_w > 0:
        terms.append(final_w * loss_fn(predictions(out), target, mask)["loss"])
    if aux_w > 0:
        extra = [loss_fn(pred, target, mask & present)["loss"] for pred, present in aux.values()]
        terms.append(aux_w * torch.stack(extra).mean())
    return torch.stack(terms).sum()


def loss_weights(model: nn.Module) -> tuple[float, float]:
    """(output, heads) loss weights of a model: heads only when their mix is fitted on validation
    data, the output plus ``fusion.aux_weight`` times the heads for a learned gate."""
    fusion = getattr(getattr(model, "module", model), "fusion", None)
    if fusion is None or not getattr(fusion, "gated", False):
        return 1.0, 0.0
    if fusion.cfg.gate == "validation":
        return 0.0, 1.0
    return 1.0, float(fusion.cfg.aux_weight)


def fit_head_mix(model: nn.Module, videos: dict[str, Any]) -> Any:
    """Fit a gated fusion's per-dimension head weights on stitched validation predictions (each
    scored frame's heads and target); None when the model has no such weights. With
    ``fusion.reliability`` the decays too: ``{"weights", "decay"}``; else the weights."""
    fusion = getattr(getattr(model, "module", model), "fusion", None)
    if fusion is None or not getattr(fusion, "fitted_mix", False):
        return None
    scored = [v for v in videos.values() if v.heads is not None and v.scored.any()]
    if not scored:
        return None
    heads = np.concatenate([v.heads[v.scored] for v in scored])
    present = np.concatenate([v.heads_present[v.scored] for v in scored])
    target = np.concatenate([v.target[v.scored] for v in scored])
    if hasattr(fusion, "decay") and all(v.heads_gap is not None for v in scored):
        # Per-frame reliability: the weights and how long each head stays trusted in a gap.
        gap = np.concatenate([v.heads_gap[v.scored] for v in scored])
        w, decay = fit_mix_decay(heads, gap, target)
        fusion.set_mix(torch.from_numpy(w), torch.from_numpy(decay))
        return {"weights": fusion.mix.tolist(), "decay": fusion.decay.tolist()}
    w = fit_mix(heads, present, target)
    fusion.set_mix(torch.from_numpy(w))
    return fusion.mix.tolist()


def train_one_epoch(
    accelerator: Any,
    model: nn.Module,
    loader: Any,
    optimizer: Any,
    scheduler: Any,
    loss_fn: nn.Module,
    state: TrainState,
    cfg: ExperimentConfig,
    on_step: Optional[Callable[[], bool]] = None,
    log_prefix: str = "",
) -> bool:
    """Run the batches of ``loader`` (already positioned: a resumed epoch skips what was done).

    Updates ``state`` (steps, batches, loss sums); after every optimizer step calls ``on_step``,
    which saves checkpoints and returns True to stop the run. Returns True when stopped.
    """
    t = cfg.train
    weights = loss_weights(model)
    model.train()
    bar = tqdm(total=state.batch_in_epoch + len(loader), initial=state.batch_in_epoch,
               desc=f"{log_prefix}epoch {state.epoch}", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True, leave=False)
    for batch in loader:
        with accelerator.accumulate(model):
            out = model(**model_inputs(batch))
            loss = training_loss(loss_fn, out, batch, weights)
            if not torch.isfinite(loss):
                bar.close()
                raise FloatingPointError(
                    f"non-finite training loss {loss.item()} at step {state.global_step} "
                    f"(epoch {state.epoch}, batch {state.batch_in_epoch}); lower train.lr or check the data")
            accelerator.backward(loss)
            if accelerator.sync_gradients and t.clip_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += 1
        state.loss_sum += float(loss.detach())
        state.loss_count += 1
        bar.update(1)
        if accelerator.sync_gradients:
            state.global_step += 1
            if t.log_every and state.global_step % t.log_every == 0:
                accelerator.log({f"{log_prefix}train/loss": float(loss.detach()),
                                 f"{log_prefix}train/lr": scheduler.get_last_lr()[0]},
                                step=state.global_step)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if on_step is not None and on_step():
                bar.close()
                return True
    bar.close()
    return False


@dataclass
class EvalResult:
    """Metrics over a whole split and the stitched per-frame predictions behind them."""

    metrics: dict[str, float]
    videos: dict[str, Any]  # video id -> avfusion.evaluation.VideoPrediction


def evaluate(accelerator: Any, model: nn.Module, loader: Any, loss_fn: Optional[nn.Module] = None,
             overlap: str = "error", n_frames: Optional[dict[str, int]] = None) -> EvalResult:
    """Metrics of ``model`` over the whole split behind ``loader`` (every process gets the same).

    ``loss_fn`` (in eval mode) adds ``loss``: the training loss over the whole split at once.
    """
    videos = predict_loader(model, loader, n_frames, accelerator=accelerator, overlap=overlap)
    metrics = split_metrics(videos)
    if loss_fn is not None:
        scored = [v for v in videos.values() if v.scored.any()]
        pred = torch.from_numpy(np.concatenate([v.pred[v.scored] for v in scored]))
        tgt = torch.from_numpy(np.concatenate([v.target[v.scored] for v in scored]))
        was_training = loss_fn.training
        loss_fn.eval()
        metrics["loss"] = float(loss_fn(pred, tgt)["loss"])
        loss_fn.train(was_training)
    return EvalResult(metrics, videos)


def _eval_overlap(cfg: ExperimentConfig) -> str:
    d = cfg.data
    return "mean" if d.eval_stride is not None and d.eval_stride < d.clip_len else "error"


def _n_frames(dataset: Any) -> Optional[dict[str, int]]:
    records = getattr(dataset, "records", None)
    return {r.video_id: int(r.n_frames) for r in records} if records is not None else None


def _flat_hparams(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def init_logging(accelerator: Any, cfg: ExperimentConfig) -> None:
    """TensorBoard run named after the experiment, with the flattened config as hyperparameters."""
    if accelerator.log_with:
        accelerator.init_trackers(cfg.name.replace("/", "_"), config=_flat_hparams(experiment_to_dict(cfg)))


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


# Fields that may change between a killed run and its resumption without changing the result.
_RESUME_FREE = ("train.stop_after_steps", "train.save_every", "train.keep_checkpoints", "train.log_every",
                "data.num_workers", "data.strict_split")


def fit(accelerator: Any, cfg: ExperimentConfig, resume: Optional[str] = None,
        datasets: Optional[Datasets] = None, log_prefix: str = "", verify_resume: bool = True) -> dict[str, Any]:
    """Train ``cfg`` to the end (or to ``train.stop_after_steps``); see the module docstring.

    ``resume``: a checkpoint folder or ``"latest"``; its files must hash as when it was saved
    (``verify_resume=False``: warn and continue). ``datasets`` skips :func:`build_datasets`
    (tests, notebooks). Returns metrics (``best``, ``final``, ``test``) and output paths.
    """
    from accelerate.utils import set_seed

    t = cfg.train
    out = Path(cfg.output_dir)
    ckpt = resolve_resume(resume, out) if resume is not None else None  # fail before any work
    if ckpt is not None:
        for problem in verify_checkpoint(ckpt, TrainState.from_file(ckpt / STATE_FILE), strict=verify_resume):
            accelerator.print(f"warning: {problem}")
    accelerator.free_memory()  # a previous fold's model/optimizer must not be saved with this one
    set_seed(t.seed)
    model = build_model(cfg)
    if cfg.data.features is not None:
        use_feature_cache(model, cfg.data.features)
    # What the model is trained on is what it is served: window, crops, colour space (config.json).
    model.cfg.serving = serving_for(cfg.data, model, training=True)
    model.serving_locked = False
    if datasets is None:
        datasets = build_datasets(cfg.data, model)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if datasets.split is not None:
            from ..data.splits import save_split

            save_split(datasets.split, out / "split.json")
        write_text_atomic(out / "experiment.yaml", yaml.safe_dump(experiment_to_dict(cfg), sort_keys=False))
    d = cfg.data
    train_dl, train_sampler = make_loader(datasets.train, d.batch_size, datasets.collate_fn, True, t.seed,
                                          d.num_workers)
    eval_dl = None
    if datasets.val is not None and len(datasets.val):
        eval_dl, _ = make_loader(datasets.val, d.eval_batch_size or d.batch_size, datasets.collate_fn,
                                 False, t.seed, d.num_workers)
    test_dl = None
    if datasets.test is not None and len(datasets.test):
        test_dl, _ = make_loader(datasets.test, d.eval_batch_size or d.batch_size, datasets.collate_fn,
                                 False, t.seed, d.num_workers)
    optimizer = build_optimizer(model, t)
    loss_fn = build_loss_fn(t)
    overlap = _eval_overlap(cfg)
    val_frames = _n_frames(datasets.val) if eval_dl is not None else None

    # Accelerate steps a prepared scheduler once per process at every optimizer step, so the
    # schedule is counted in single-process steps: samples seen, whatever the process count.
    steps_per_epoch = math.ceil(math.ceil(len(train_dl) / accelerator.num_processes) / t.grad_accum)
    total = max(1, steps_per_epoch * t.epochs * accelerator.num_processes)
    scheduler = build_scheduler(optimizer, t, total)
    model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    eval_dl = accelerator.prepare(eval_dl) if eval_dl is not None else None
    test_dl = accelerator.prepare(test_dl) if test_dl is not None else None
    loss_fn = loss_fn.to(accelerator.device)

    state = TrainState(config=experiment_to_dict(cfg))
    if ckpt is not None:
        state = TrainState.from_file(ckpt / STATE_FILE)
        diffs = [x for x in _config_diff(state.config, experiment_to_dict(cfg))
                 if not x.startswith(_RESUME_FREE)]
        if diffs:
            accelerator.print(f"warning: resuming {ckpt} with a changed config: {'; '.join(diffs)}")
        accelerator.load_state(str(ckpt))
        state.config = experiment_to_dict(cfg)
        if not accelerator.is_main_process:  # the saved sums are totals over processes
            state.loss_sum = state.loss_count = 0.0
        accelerator.print(f"resumed from {ckpt}: step {state.global_step}, epoch {state.epoch}, "
                          f"batch {state.batch_in_epoch}")

    def checkpoint() -> Path:
        return save_checkpoint(accelerator, state, out, t.keep_checkpoints)

    last_ckpt: Optional[Path] = None
    stopped = False

    def on_step() -> bool:
        nonlocal last_ckpt, stopped
        if t.save_every and state.global_step % t.save_every == 0:
            last_ckpt = checkpoint()
        if t.stop_after_steps is not None and state.global_step >= t.stop_after_steps:
            if last_ckpt is None or last_ckpt.name != f"step_{state.global_step}":
                last_ckpt = checkpoint()
            stopped = True
        return stopped

    def log_epoch(row: dict) -> None:
        state.history.append(row)
        accelerator.log({f"{log_prefix}{k}": v for k, v in row.items() if k not in ("epoch", "step")},
                        step=state.global_step)
        if accelerator.is_main_process:
            write_csv(state.history, out / "metrics.csv")

    best_dir = out / "best"
    final_eval: dict[str, float] = {}
    if t.eval_before_training and resume is None and eval_dl is not None:
        res = evaluate(accelerator, model, eval_dl, loss_fn, overlap, val_frames)
        log_epoch({"epoch": 0, "step": 0, **{f"val_{k}": v for k, v in res.metrics.items()}})
        final_eval = res.metrics

    start = time.perf_counter()
    while state.epoch < t.epochs and not stopped:
        epoch = state.epoch
        _seed_epoch(train_dl, train_sampler, t.seed, epoch)
        loader = train_dl
        if state.batch_in_epoch:
            from accelerate import skip_first_batches

            loader = skip_first_batches(train_dl, state.batch_in_epoch)
            _seed_epoch(loader, train_sampler, t.seed, epoch)
        stopped = train_one_epoch(accelerator, model, loader, optimizer, scheduler, loss_fn, state, cfg,
                                  on_step, log_prefix)
        if stopped:
            break
        sums = torch.tensor([state.loss_sum, state.loss_count], dtype=torch.float64, device=accelerator.device)
        sums = accelerator.reduce(sums, reduction="sum").cpu()
        row: dict[str, Any] = {"epoch": epoch + 1, "step": state.global_step,
                               "lr": scheduler.get_last_lr()[0],
                               "train_loss": float(sums[0] / max(sums[1], 1.0))}
        if eval_dl is not None:
            res = evaluate(accelerator, model, eval_dl, loss_fn, overlap, val_frames)
            mix = fit_head_mix(model, res.videos)
            if mix is not None:  # the heads' weights fitted on this split: its metrics with them
                res = evaluate(accelerator, model, eval_dl, loss_fn, overlap, val_frames)
                weights = mix["weights"] if isinstance(mix, dict) else mix
                row.update({"mix_valence": json.dumps([round(w, 2) for w in weights[0]]),
                            "mix_arousal": json.dumps([round(w, 2) for w in weights[1]])})
                if isinstance(mix, dict):
                    row.update({"decay_valence": json.dumps([round(w, 1) for w in mix["decay"][0]]),
                                "decay_arousal": json.dumps([round(w, 1) for w in mix["decay"][1]])})
            row.update({f"val_{k}": v for k, v in res.metrics.items()})
            final_eval = res.metrics
            score = res.metrics[SELECT_METRIC]
            if score > state.best_metric:
                state.best_metric, state.best_epoch = score, epoch + 1
                export_model(accelerator, model, cfg, best_dir,
                             {"epoch": epoch + 1, "step": state.global_step, "metrics": res.metrics,
                              "selected_by": f"val {SELECT_METRIC}"})
        log_epoch(row)
        accelerator.print(f"{log_prefix}epoch {epoch + 1}/{t.epochs}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k in ("train_loss", "val_ccc_valence",
                                                             "val_ccc_arousal", "val_ccc_mean")))
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        state.loss_sum = state.loss_count = 0.0
        last_ckpt = checkpoint()

    result: dict[str, Any] = {
        "output_dir": str(out),
        "global_step": state.global_step,
        "epochs_done": state.epoch,
        "stopped_early": stopped,
        "checkpoint": str(last_ckpt) if last_ckpt is not None else None,
        "metrics_csv": str(out / "metrics.csv"),
        "tensorboard_dir": str(out / "tensorboard"),
        "train_seconds": time.perf_counter() - start,
        "history": state.history,
        "n_labelled": datasets.n_labelled,
    }
    if stopped:
        return result
    if eval_dl is None:
        # Nothing to select on: the last epoch is the model (never pick epochs on the test set).
        export_model(accelerator, model, cfg, best_dir,
                     {"epoch": state.epoch, "step": state.global_step, "metrics": {}, "selected_by": "last epoch"})
        state.best_epoch = state.epoch
    result.update(best_model=str(best_dir), best_epoch=state.best_epoch, final=final_eval,
                  best=next((
                      {k[4:]: v for k, v in row.items() if k.startswith("val_")}
                      for row in state.history if row["epoch"] == state.best_epoch), {}))
    if test_dl is not None:
        from ..factory import WEIGHTS_NAME
        from ..weights import load_strict

        accelerator.wait_for_everyone()
        load_strict(accelerator.unwrap_model(model), best_dir / WEIGHTS_NAME, family="best model weight")
        res = evaluate(accelerator, model, test_dl, loss_fn, overlap, _n_frames(datasets.test))
        result["test"] = res.metrics
        if accelerator.is_main_process:
            write_text_atomic(out / "test_metrics.json", json.dumps(res.metrics, indent=1))
    if accelerator.is_main_process:
        write_text_atomic(out / "results.json", json.dumps({k: v for k, v in result.items() if k != "history"},
                                                           indent=1, default=str))
    return result


# ------------------------------------------------------------------------------------------------
# Cross-validation


def cross_validate(accelerator: Any, cfg: ExperimentConfig, folds: int, resume: Optional[str] = None,
                   verify_resume: bool = True) -> dict[str, Any]:
    """Train and evaluate every fold; mean and sample standard deviation (ddof=1) over folds of
    each metric.

    Each fold writes to ``<output_dir>/fold_<i>``; the held-out fold is its test set, so fold
    results are test metrics of the model chosen on that fold's validation part (or its last
    epoch when ``data.val_fraction`` is 0). Writes ``<output_dir>/cv_results.json``.
    """
    if folds < 2:
        raise ValueError(f"--folds needs at least 2 folds, got {folds}")
    if resume not in (None, "latest"):
        raise ValueError("with --folds, --resume takes 'latest' (each fold resumes from its own folder)")
    runs = []
    for i in range(folds):
        fcfg = with_fold(cfg, i, folds)
        fold_resume = resume
        if resume == "latest" and not checkpoint_dirs(fcfg.output_dir):
            fold_resume = None
        if fold_resume == "latest" and (Path(fcfg.output_dir) / "results.json").is_file():
            runs.append(json.loads((Path(fcfg.output_dir) / "results.json").read_text()))
            accelerator.print(f"fold {i}: already finished, results read back")
            continue
        accelerator.print(f"=== fold {i + 1}/{folds} ===")
        runs.append(fit(accelerator, fcfg, resume=fold_resume, log_prefix=f"fold_{i}/", verify_resume=verify_resume))
    part = "test" if all(r.get("test") for r in runs) else "final"
    per_fold = [r[part] for r in runs]
    keys = [k for k in per_fold[0] if all(isinstance(f.get(k), (int, float)) for f in per_fold)]
    summary = {k: {"mean": float(np.mean([f[k] for f in per_fold])),
                   "std": float(np.std([f[k] for f in per_fold], ddof=1)),
                   "folds": [float(f[k]) for f in per_fold]} for k in keys}
    out = {"folds": folds, "part": part, "metrics": summary, "runs": [r["output_dir"] for r in runs],
           "split_by": cfg.data.split_by}
    if accelerator.is_main_process:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(cfg.output_dir) / "cv_results.json", json.dumps(out, indent=1))
    return out


def format_cv_table(cv: dict[str, Any], keys: Optional[list[str]] = None) -> str:
    """Markdown table: one row per metric, mean ± std over folds and the per-fold values."""
    m = cv["metrics"]
    keys = keys or [k for k in ("ccc_valence", "ccc_arousal", "ccc_mean", "pcc_valence", "pcc_arousal",
                                "rmse_valence", "rmse_arousal", "sagr_valence", "sagr_arousal") if k in m]
    n = cv["folds"]
    lines = [f"{n}-fold cross-validation ({cv['part']} metrics, split by {cv['split_by']}; "
             "std over folds, ddof=1)", "",
             "| metric | mean ± std | " + " | ".join(f"fold {i}" for i in range(n)) + " |",
             "|---|---:|" + "---:|" * n]
    for k in keys:
        lines.append(f"| {k} | {m[k]['mean']:.4f} ± {m[k]['std']:.4f} | "
                     + " | ".join(f"{v:.4f}" for v in m[k]["folds"]) + " |")
    return "\n".join(lines)


# What a training run writes into its output_dir (``--overwrite`` removes these, nothing else).
RUN_FILES = ("checkpoints", "best", "tensorboard", "results.json", "test_metrics.json", "cv_results.json",
             "metrics.csv", "split.json", "experiment.yaml", OWNER_NAME)


def run_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """The settings that make a run's files what they are: the config without the fields a resumed
    run may change (:data:`_RESUME_FREE`)."""
    d = experiment_to_dict(cfg)
    for key in _RESUME_FREE:
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    return d


def _previous_identity(out: Path) -> Optional[dict[str, Any]]:
    owner = read_owner(out)
    if owner is not None:
        return owner.get("identity")
    exp = out / "experiment.yaml"  # a folder written before runs recorded themselves
    if exp.is_file():
        try:
            from .experiment import load_experiment

            return run_identity(load_experiment(exp))
        except (ValueError, OSError):
            return None
    return None


def check_run_folder(cfg: ExperimentConfig, resume: Optional[str] = None, overwrite: bool = False,
                     clear: bool = True) -> None:
    """Refuse to start a run in an ``output_dir`` that holds another run (finished or not) unless
    ``resume`` continues it or ``overwrite`` replaces it (with ``clear``, the main process's part:
    its files, :data:`RUN_FILES`, are removed)."""
    out = Path(cfg.output_dir)
    check_output_folder(out, "output_dir")
    folds = sorted(p for p in out.glob("fold_*") if p.is_dir())
    finished = (out / "results.json").is_file() or (out / "cv_results.json").is_file()
    ckpts = checkpoint_dirs(out) or [c for f in folds for c in checkpoint_dirs(f)]
    # Files worth keeping: a run stopped before its first checkpoint (a config error, a diverging
    # loss) leaves nothing that a new run could mix with.
    held = finished or bool(ckpts) or (out / "best").exists() or any(
        (f / "results.json").is_file() or (f / "best").exists() for f in folds)
    if not held or resume is not None:
        return  # --resume continues this folder's run (a changed config warns when it resumes)
    if overwrite:
        if not clear:
            return
        import shutil

        for entry in [out / name for name in RUN_FILES] + folds:
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
        return
    old = _previous_identity(out)
    changes = identity_changes(old, run_identity(cfg)) if old is not None else []
    which = (f" of another config ({changes_text(changes)})" if changes
             else " of this config" if old is not None else "")
    if finished:
        raise RunFolderError(f"output_dir {out}: holds a finished training run{which}; pass --overwrite to "
                             "replace it, or choose another output_dir")
    if ckpts:
        raise RunFolderError(f"output_dir {out}: holds an unfinished training run{which} (last checkpoint "
                             f"{ckpts[-1].name}); --resume latest continues it, --overwrite starts again, or "
                             "choose another output_dir")
    raise RunFolderError(f"output_dir {out}: holds the start of a training run{which} without a checkpoint; "
                         "pass --overwrite to start again, or choose another output_dir")


def train(cfg: ExperimentConfig, resume: Optional[str] = None, folds: int = 0, log: bool = True,
          verify_resume: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train an experiment end to end with a fresh Accelerator: one run, or every fold of a
    ``folds``-fold cross-validation. Returns :func:`fit`'s or :func:`cross_validate`'s result.

    The output folder belongs to this run: another live run's lock, or another run's files
    (unless ``resume`` or ``overwrite``), stop it before any work (:func:`check_run_folder`)."""
    if resume is not None and overwrite:
        raise ValueError("--resume continues the run of output_dir, --overwrite replaces it: give one of them")
    accelerator = make_accelerator(cfg, log=log)
    out = Path(cfg.output_dir)
    check_output_folder(out, "output_dir")
    with run_lock(out, "train") if accelerator.is_main_process else contextlib.nullcontext():
        check_run_folder(cfg, resume, overwrite, clear=accelerator.is_main_process)
        if accelerator.is_main_process:
            write_owner(out, "train", run_identity(cfg))
        return _train(accelerator, cfg, resume, folds, verify_resume)


def _train(accelerator: Any, cfg: ExperimentConfig, resume: Optional[str], folds: int,
           verify_resume: bool) -> dict[str, Any]:
    init_logging(accelerator, cfg)
    # `accelerate launch --cpu --num_processes N` starts ONE process (Accelerate needs MPI for
    # several CPU processes): say how many really run, so a silent single-process run is visible.
    accelerator.print(f"{cfg.name}: {accelerator.num_processes} process(es) on {accelerator.device}, "
                      f"mixed precision {accelerator.mixed_precision}, output {cfg.output_dir}")
    try:
        if folds:
            result = cross_validate(accelerator, cfg, folds, resume=resume, verify_resume=verify_resume)
            accelerator.print(format_cv_table(result))
        else:
            result = fit(accelerator, cfg, resume=resume, verify_resume=verify_resume)
            summary = {k: result.get(k) for k in ("best_epoch", "best", "test", "best_model", "checkpoint")}
            accelerator.print(json.dumps(summary, indent=1, default=str))
    finally:
        accelerator.end_training()
    return result


__all__ = ["EpochSampler", "EvalResult", "SELECT_METRIC", "make_accelerator", "make_loader", "train_one_epoch",
           "evaluate", "init_logging", "fit", "cross_validate", "format_cv_table", "model_inputs", "train",
           "check_run_folder", "run_identity", "RUN_FILES"]
