"""method "calibrated": streamkv's layout with statistics fixed offline (KVQuant-style).

Everything is streamkv's (pre-RoPE keys per channel, values per token in channel groups, sink
tokens and outlier channels at the high bits) except where the per-channel statistics come
from: the (low, high) ranges of the calibration file `calibration_path`
(`streamkv.calibration`, written by `python -m workers.calibrate`), never updated while
running. Key grids and outlier channels are therefore the same for every chunk, and a value
outside the calibrated range is clipped (saturated at the range). With `value_quant_groups=0`
the value grids are calibrated too; with groups (the default) values keep per-token scales and
the calibration only picks their outlier channels, as in the streaming method.

The file's dims are checked against the model's when the cache is built; each layer takes the
ranges of its own index (`LayerContext.layer_idx`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamkv.calibration import calibration_info, load_calibration
from streamkv.families import head_dim_of
from streamkv.layers import LayerContext
from streamkv.methods.registry import register_method
from streamkv.methods.streaming import PackedLayoutSettings, StreamingLayer
from streamkv.settings import Problem, setting, text


class FixedStats:
    """A `streamkv.channel_stats.ChannelStats` whose range never changes."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        self.low, self.high = low.float(), high.float()
        self.observations = 0

    def observe(self, x: torch.Tensor) -> FixedStats:
        if self.low.device != x.device:
            self.low, self.high = self.low.to(x.device), self.high.to(x.device)
        self.observations += 1
        return self

    @property
    def absmax(self) -> torch.Tensor:
        return torch.maximum(self.low.abs(), self.high.abs())


class CalibratedLayer(StreamingLayer):
    def _new_stats(self):
        calib = load_calibration(self.settings.calibration_path)
        i = self.ctx.layer_idx
        return FixedStats(*calib.key_range(i, self.pre_rope)), FixedStats(*calib.range("value", i))

    def _range(self, stats, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stats.low, stats.high  # fixed ranges: out-of-range values are clipped


@register_method
@dataclass(frozen=True)
class Calibrated(PackedLayoutSettings):
    """KVQuant-style: streamkv's layout with per-channel ranges fixed offline by a calibration file."""

    name = "calibrated"

    calibration_path: str = setting("", text(), "the calibration file (python -m workers.calibrate)")

    def model_problems(self, model_config) -> list[Problem]:
        problems = super().model_problems(model_config)
        try:
            calib = load_calibration(self.calibration_path)
        except (FileNotFoundError, ValueError) as err:
            return problems + [Problem("calibration_path", str(err))]
        wrong = calib.mismatch(model_config.num_hidden_layers, model_config.num_key_value_heads,
                               head_dim_of(model_config))
        if wrong:
            problems.append(Problem("calibration_path", f"{self.calibration_path} does not match the model: "
                                    f"{wrong}; calibrate this model with python -m workers.calibrate"))
        return problems

    @classmethod
    def example(cls, model, workdir) -> Calibrated:
        """Calibrated on 4 random-token windows of `model` (enough to exercise the method)."""
        from pathlib import Path

        from streamkv.calibrate import calibrate
        from streamkv.calibration import save_calibration

        g = torch.Generator().manual_seed(0)
        windows = torch.randint(0, model.config.vocab_size, (4, 96), generator=g)
        path = save_calibration(calibrate(model, windows), Path(workdir) / "example-calibration.pt")
        return cls(calibration_path=str(path))

    def environment(self) -> dict:
        return {"calibration": calibration_info(self.calibration_path)}

    def make_layer(self, ctx: LayerContext) -> CalibratedLayer:
        return CalibratedLayer(self, ctx)
