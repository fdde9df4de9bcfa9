"""EmoNet (Toisoul et al., Nature Machine Intelligence 2021): a face-alignment network plus an
emotion head that predicts expression logits, valence and arousal from a 256x256 face crop.

Written from the paper and the layout of the official checkpoints (``emonet_8.pth`` /
``emonet_5.pth``); parameter names match them, so the files load strictly once the leading
``module.`` is stripped (see :func:`load_emonet_checkpoint`).

The network has two parts:

- the face-alignment trunk (FAN: a stem, 2 stacked hourglasses, 68 landmark heatmaps). The
  official training keeps it frozen; so does :class:`EmoNetEncoder` by default.
- the emotion head: the stem features and the hourglass features (the latter weighted by the
  summed heatmaps, an attention map over the face) -> 4 residual blocks with max pooling ->
  global average -> the 256-wide emotion feature -> MLP -> ``n_expression`` logits + valence +
  arousal.

Every norm layer is ``BatchNorm2d``: the official code names them InstanceNorm2d but rebinds that
name to BatchNorm2d for the whole process; the weights carry running statistics accordingly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VideoEncoderConfig
from ..weights import load_strict, read_weights
from .base import VideoEncoder, inference_copy

N_LANDMARKS = 68  # iBUG-68 heatmaps; kept at every width


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation residual block whose output concatenates three 3x3 branches.

    Channels ``out/2 + out/4 + out/4 = out``; the residual is projected by BN-ReLU-1x1 conv when the
    channel count changes (keys ``downsample.0`` / ``downsample.2``).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch // 2)
        self.bn2 = nn.BatchNorm2d(out_ch // 2)
        self.conv2 = _conv3x3(out_ch // 2, out_ch // 4)
        self.bn3 = nn.BatchNorm2d(out_ch // 4)
        self.conv3 = _conv3x3(out_ch // 4, out_ch // 4)
        self.downsample: Optional[nn.Sequential] = None
        if in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, 1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in, H, W) -> (N, out, H, W)
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat((out1, out2, out3), dim=1) + residual


class HourGlass(nn.Module):
    """Recursive hourglass of ``depth`` levels at constant width.

    Level L: ``b1_L`` on the input (skip branch); ``b2_L`` after 2x2 max pooling; the next level
    down (or ``b2_plus_1`` at the bottom); ``b3_L``; nearest 2x upsampling; sum. Blocks are
    registered in the order the official checkpoints list them (b1_4, b2_4, b1_3, ..., b2_plus_1,
    b3_1, ..., b3_4).

    Max pooling (here and after the stem's ``conv2``), not the average pooling of the original
    face-alignment network: only max pooling reproduces the official EmoNet outputs in
    ``reference/emonet_parity.json`` (all 68 heatmap argmaxes; average pooling matches 3 of 68).
    """

    def __init__(self, depth: int, features: int) -> None:
        super().__init__()
        self.depth = depth
        self._register(depth, features)

    def _register(self, level: int, features: int) -> None:
        self.add_module(f"b1_{level}", ConvBlock(features, features))
        self.add_module(f"b2_{level}", ConvBlock(features, features))
        if level > 1:
            self._register(level - 1, features)
        else:
            self.add_module(f"b2_plus_{level}", ConvBlock(features, features))
        self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up1 = self._modules[f"b1_{level}"](x)
        low1 = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        if level > 1:
            low2 = self._level(level - 1, low1)
        else:
            low2 = self._modules[f"b2_plus_{level}"](low1)
        low3 = self._modules[f"b3_{level}"](low2)
        return up1 + F.interpolate(low3, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        return self._level(self.depth, x)


class EmoNet(nn.Module):
    """Face alignment (stacked hourglasses) + attention-weighted emotion head.

    Args:
        num_modules: stacked hourglasses (official: 2).
        n_expression: expression classes (official files: 8 or 5).
        n_reg: regressed values (valence, arousal).
        n_blocks: residual blocks of the emotion head, each followed by 2x2 max pooling (official: 4).
        attention: weight the hourglass features by the summed landmark heatmaps (official: True).
        width: channel width of the trunk; 256 gives the official layout. Other widths scale every
            channel count proportionally (64 -> width/4, 128 -> width/2); 68 heatmaps are kept.
    """

    def __init__(
        self,
        num_modules: int = 2,
        n_expression: int = 8,
        n_reg: int = 2,
        n_blocks: int = 4,
        attention: bool = True,
        width: int = 256,
    ) -> None:
        super().__init__()
        if width % 16 != 0 or width <= 0:
            raise ValueError(f"EmoNet width must be a positive multiple of 16 (ConvBlock splits /4), got {width}")
        if num_modules < 1:
            raise ValueError(f"EmoNet needs at least one hourglass module, got num_modules={num_modules}")
        self.num_modules = num_modules
        self.n_expression = n_expression
        self.n_reg = n_reg
        self.n_blocks = n_blocks
        self.attention = attention
        self.width = width
        w4, w2, w = width // 4, width // 2, width

        self.conv1 = nn.Conv2d(3, w4, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(w4)
        self.conv2 = ConvBlock(w4, w2)
        self.conv3 = ConvBlock(w2, w2)
        self.conv4 = ConvBlock(w2, w)
        for i in range(num_modules):
            self.add_module(f"m{i}", HourGlass(4, w))
            self.add_module(f"top_m_{i}", ConvBlock(w, w))
            self.add_module(f"conv_last{i}", nn.Conv2d(w, w, 1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(w))
            self.add_module(f"l{i}", nn.Conv2d(w, N_LANDMARKS, 1))
            if i < num_modules - 1:
                self.add_module(f"bl{i}", nn.Conv2d(w, w, 1))
                self.add_module(f"al{i}", nn.Conv2d(N_LANDMARKS, w, 1))

        # Emotion head: stem features (w) + one w-wide feature per hourglass.
        self.conv1x1_input_emo_2 = nn.Conv2d(w * (1 + num_modules), w, 1)
        blocks: list[nn.Module] = []
        for _ in range(n_blocks):
            blocks += [ConvBlock(w, w), nn.MaxPool2d(2, 2)]
        self.emo_net_2 = nn.Sequential(*blocks)
        # The official head averages a 4x4 map (AvgPool2d(4) at 256x256 input); a global average is
        # the same there and also accepts other input sizes.
        self.avg_pool_2 = nn.AdaptiveAvgPool2d(1)
        self.emo_fc_2 = nn.Sequential(
            nn.Linear(w, w2), nn.BatchNorm1d(w2), nn.ReLU(inplace=True), nn.Linear(w2, n_expression + n_reg)
        )

    def fan_modules(self) -> list[nn.Module]:
        """The face-alignment trunk's submodules (what official training keeps frozen)."""
        head = {"conv1x1_input_emo_2", "emo_net_2", "avg_pool_2", "emo_fc_2"}
        return [m for name, m in self.named_children() if name not in head]

    def forward_fan(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Face-alignment trunk.

        x: (N, 3, H, W) RGB in [0, 1]. Returns the stem features (N, w, H/4, W/4), the last
        heatmaps (N, 68, H/4, W/4) and one hourglass feature (N, w, H/4, W/4) per module.
        """
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2, stride=2)
        x = self.conv4(self.conv3(x))
        previous = x
        hg_features: list[torch.Tensor] = []
        heatmaps = x  # replaced in the loop (num_modules >= 1 is checked at construction)
        for i in range(self.num_modules):
            hg = self._modules[f"m{i}"](previous)
            ll = self._modules[f"top_m_{i}"](hg)
            ll = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](ll)))
            heatmaps = self._modules[f"l{i}"](ll)
            if i < self.num_modules - 1:
                ll = self._modules[f"bl{i}"](ll)
                previous = previous + ll + self._modules[f"al{i}"](heatmaps)
            # Taken after bl_i: the official outputs are reproduced only this way.
            hg_features.append(ll)
        return x, heatmaps, hg_features

    def forward_head(
        self, stem: torch.Tensor, heatmaps: torch.Tensor, hg_features: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Emotion head on the outputs of :meth:`forward_fan`; returns the dict of :meth:`forward`."""
        hg = torch.cat(hg_features, dim=1)
        if self.attention:
            hg = hg * heatmaps.sum(dim=1, keepdim=True)
        feat = self.conv1x1_input_emo_2(torch.cat((stem, hg), dim=1))
        feat = self.avg_pool_2(self.emo_net_2(feat)).flatten(1)
        out = self.emo_fc_2(feat)
        return {
            "heatmap": heatmaps,
            "expression": out[:, : self.n_expression],
            "valence": out[:, -2],
            "arousal": out[:, -1],
            "feature": feat,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, 256, 256) RGB in [0, 1].

        Returns ``heatmap`` (N, 68, 64, 64), ``expression`` (N, n_expression) logits, ``valence``
        and ``arousal`` (N,) (unbounded; clip to [-1, 1] for scoring) and ``feature`` (N, width),
        the pooled emotion feature.
        """
        return self.forward_head(*self.forward_fan(x))


class EmoNetEncoder(VideoEncoder):
    """EmoNet as a per-frame video encoder: ``forward_features`` gives the 256-wide emotion feature.

    Args:
        frozen: the whole network gets no gradients and stays in eval() even when a parent module
            calls train() (BatchNorm statistics untouched).
        freeze_trunk: the face-alignment trunk never trains (as in the official training): no
            gradients, eval() mode, run without autograd. Only matters when not ``frozen``.
        flip_average: average predictions and features with those of the horizontally mirrored
            image, as the official evaluation does (heatmaps are those of the unmirrored image).
    """

    # Has its own per-frame valence/arousal head (frame-by-frame models, `fusion: null`).
    has_va_head = True

    def __init__(
        self,
        n_expression: int = 8,
        width: int = 256,
        num_modules: int = 2,
        n_blocks: int = 4,
        frozen: bool = True,
        freeze_trunk: bool = True,
        flip_average: bool = False,
    ) -> None:
        super().__init__()
        self.net = EmoNet(num_modules=num_modules, n_expression=n_expression, n_blocks=n_blocks, width=width)
        self.num_features = width
        # EmoNet takes RGB in [0, 1] with no mean/std normalisation (official preprocessing).
        self.pretrained_cfg = {
            "input_size": (3, 256, 256),
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "interpolation": "bilinear",
        }
        self.frozen = frozen
        self.freeze_trunk = freeze_trunk or frozen
        self.flip_average = flip_average
        self._apply_freezing()

    @classmethod
    def from_config(cls, cfg: VideoEncoderConfig) -> "EmoNetEncoder":
        """Build from a :class:`VideoEncoderConfig`, loading ``cfg.checkpoint`` strictly if set."""
        enc = cls(
            n_expression=cfg.n_expression,
            width=cfg.width,
            num_modules=cfg.num_modules,
            n_blocks=cfg.n_blocks,
            frozen=cfg.frozen,
            flip_average=cfg.flip_average,
        )
        if cfg.checkpoint:
            load_emonet_checkpoint(enc.net, cfg.checkpoint)
        return enc

    def _apply_freezing(self) -> None:
        trunk = self.net.parameters() if self.frozen else (p for m in self.net.fan_modules() for p in m.parameters())
        for p in trunk:
            p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "EmoNetEncoder":
        # A frozen encoder ignores train(): BatchNorm statistics must stay those of the weights.
        super().train(mode and not self.frozen)
        if self.freeze_trunk:
            for m in self.net.fan_modules():
                m.eval()
        return self

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.freeze_trunk and not self.frozen and torch.is_grad_enabled():
            # No autograd graph through the trunk: only the emotion head trains.
            with torch.no_grad():
                trunk = self.net.forward_fan(x)
            return self.net.forward_head(*trunk)
        return self.net(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, 256, 256) RGB in [0, 1]. Returns the dict of :meth:`EmoNet.forward`."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"EmoNetEncoder expects (N, 3, H, W) RGB images, got shape {tuple(x.shape)}")
        if not self.flip_average:
            return self._run(x)
        out = self._run(torch.cat((x, x.flip(-1)), dim=0))
        n = x.shape[0]
        averaged = {k: 0.5 * (v[:n] + v[n:]) for k, v in out.items() if k != "heatmap"}
        averaged["heatmap"] = out["heatmap"][:n]
        return averaged

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, 256, 256) -> the pooled emotion feature (N, width)."""
        return self.forward(x)["feature"]


class FastEmoNet:
    """Inference runner made by :func:`optimize_for_inference`; ``module`` is the converted copy."""

    def __init__(self, module: nn.Module, run: Callable[[torch.Tensor], dict], channels_last: bool) -> None:
        self.module = module
        self._run = run
        self._channels_last = channels_last
        param = next(module.parameters())
        self.device, self.dtype = param.device, param.dtype

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, H, W) float images of any dtype/device. Returns the output dict in float32."""
        x = x.to(device=self.device, dtype=self.dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return {k: v.float() for k, v in self._run(x).items()}


def optimize_for_inference(
    model: nn.Module,
    dtype: Optional[torch.dtype] = torch.bfloat16,
    channels_last: bool = True,
    compile: bool = False,
    device: Optional[torch.device | str] = None,
) -> FastEmoNet:
    """A fast inference copy of an :class:`EmoNet` or :class:`EmoNetEncoder`.

    The copy is put in eval(), optionally moved to ``device``, cast to ``dtype`` (bfloat16 weights:
    oneDNN runs them on AVX512-BF16 / AMX CPUs, tensor cores on CUDA; None keeps float32) and to
    channels_last (the layout oneDNN and cuDNN convolutions prefer). With ``compile`` it is wrapped
    in torch.compile, on the CPU with inductor freezing, which treats the weights as constants and
    prepacks them for oneDNN. The runner takes float images (N, 3, H, W), runs under
    torch.inference_mode and returns the model's output dict in float32. The original model is
    left untouched.
    """
    fast, run = inference_copy(model, dtype, channels_last, compile, device)
    return FastEmoNet(fast, run, channels_last)


# --- checkpoints --------------------------------------------------------------------------------
# The official files are plain state dicts saved from nn.DataParallel: every key starts "module.".

_EMONET_WRAPPERS = ("state_dict", "model", "net")


def emonet_filter_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint dict and strip one leading ``module.`` from every key.

    Only the prefix goes: a ``module.`` later in a key is part of its name.
    """
    sd: Any = state_dict
    for wrapper in _EMONET_WRAPPERS:
        if isinstance(sd, Mapping) and isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(sd).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise ValueError(f"EmoNet state dict entry {key!r} is not a (name, tensor) pair ({type(value).__name__})")
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in out:
            raise ValueError(f"EmoNet state dict has {name!r} both with and without the 'module.' prefix")
        out[name] = value
    return out


def emonet_filter_fn(raw: Any, model: nn.Module, source: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The EmoNet filter for :func:`avfusion.weights.load_strict` (names the file in its errors)."""
    try:
        return emonet_filter_state_dict(raw), set()
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load_emonet_checkpoint(model: nn.Module, path_or_state_dict: Union[str, Path, Mapping[str, Any]]) -> nn.Module:
    """Load official EmoNet weights (or any EmoNet state dict) strictly into ``model``.

    ``model`` is an :class:`EmoNet` or an :class:`EmoNetEncoder` (its ``net`` is loaded). Raises a
    ValueError naming the source and listing missing, unexpected and wrongly shaped keys when the
    weights do not fit the architecture exactly, with the class count to use when that is why.
    """
    target = model.net if isinstance(model, EmoNetEncoder) else model
    try:
        load_strict(target, path_or_state_dict, emonet_filter_fn, family="EmoNet weight")
    except ValueError as e:
        hint = ""
        raw = path_or_state_dict if isinstance(path_or_state_dict, Mapping) else None
        if raw is None and "does not fit" in str(e):
            raw = read_weights(path_or_state_dict, "EmoNet weight")
        if raw is not None and "does not fit" in str(e):
            head = emonet_filter_state_dict(raw).get("emo_fc_2.3.weight")
            n_expr = getattr(target, "n_expression", None)
            if head is not None and n_expr is not None and head.shape[0] - 2 != n_expr:
                hint = (f" The file has {head.shape[0] - 2} expression classes: build the model with "
                        f"n_expression={head.shape[0] - 2}.")
        raise ValueError(f"{e}{hint}") from None
    return model
