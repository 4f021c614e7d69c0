"""method="calibrated": streamkv's layout with statistics fixed offline (KVQuant-style).

Everything is `StreamingLayer`'s (pre-RoPE keys per channel, values per token in channel
groups, sink tokens and outlier channels at the high bits) except where the per-channel
statistics come from: the (low, high) ranges of the calibration file named by
`config.calibration_path` (`streamkv.calibration`), never updated while running (no EMA).
Key grids and outlier channels are therefore the same for every chunk, and a value outside
the calibrated range is clipped (saturated at the range), whatever `range_mode` says. With
`value_quant_groups=0` the value grids are calibrated too; with groups (the default) values
keep per-token scales and the calibration only picks their outlier channels, as in the
streaming method.

A cache layer is not told its layer index (`make_layer(config, n_kv_heads, head_dim)`), so
the layer finds it on its first update: the object that called `update` (the
`CompressedCache`) holds it in its `layers` list. It can also be set beforehand
(`layer.layer_idx = i`). The calibration's dims are checked against the model's: heads and
head_dim when the layer is built, the layer count when the index is found.
"""

from __future__ import annotations

import sys

import torch

from streamkv.methods.streaming import StreamingLayer


class FixedStats:
    """A `streamkv.stats.ChannelStats` whose range never changes."""

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
    def __init__(self, config, n_kv_heads: int, head_dim: int):
        groups = config.value_quant_groups
        if groups and head_dim % groups:
            raise ValueError(f"value_quant_groups={groups} must divide the model's head_dim={head_dim} "
                             f"(allowed: 0 or a divisor of {head_dim})")
        super().__init__(config, n_kv_heads, head_dim)
        from streamkv.calibration import load_calibration

        self.calibration = load_calibration(config.calibration_path)
        self.calibration.check_dims(None, n_kv_heads, head_dim, where=str(config.calibration_path))
        self.layer_idx: int | None = None
        self.key_stats = self.value_stats = None  # bound once the layer index is known

    def _bind(self, layer_idx: int, num_layers: int | None) -> None:
        calib = self.calibration
        if num_layers is not None:
            calib.check_dims(num_layers, self.n_heads, self.head_dim, where=str(self.config.calibration_path))
        if not 0 <= layer_idx < calib.num_layers:
            raise ValueError(f"layer {layer_idx} has no statistics in {self.config.calibration_path} "
                             f"(num_layers={calib.num_layers})")
        self.layer_idx = layer_idx
        self.key_stats = FixedStats(*calib.key_range(layer_idx, self.pre_rope))
        self.value_stats = FixedStats(*calib.range("value", layer_idx))

    def _find_index(self) -> tuple[int, int | None]:
        frame = sys._getframe(2)
        for _ in range(4):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            layers = getattr(owner, "layers", None)
            if isinstance(layers, (list, tuple)):
                for i, layer in enumerate(layers):
                    if layer is self:
                        return i, len(layers)
            frame = frame.f_back
        raise RuntimeError("CalibratedLayer could not find its layer index: update it through a "
                           "CompressedCache, or set layer.layer_idx first")

    def update(self, key_states, value_states, *args, **kwargs):
        if self.key_stats is None:
            if self.layer_idx is not None:
                self._bind(self.layer_idx, None)
            else:
                self._bind(*self._find_index())
        return super().update(key_states, value_states, *args, **kwargs)

    def _range(self, stats, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stats.low, stats.high  # fixed ranges: out-of-range values are clipped

    def trace_rows(self) -> list[dict]:
        return [] if self.key_stats is None else super().trace_rows()

    def reset(self) -> None:
        super().reset()
        self.key_stats = self.value_stats = None  # the fixed ranges are bound again on update
