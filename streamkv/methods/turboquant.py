"""TurboQuant-style peer (Zandieh, Daliri, Hadian, Mirrokni 2025, arXiv 2504.19874; the MSE
quantizer, its Algorithm 1): each key and value vector of a KV head is stored as its norm (fp16)
and, for its direction, b-bit indices into the Lloyd-Max codebook of one coordinate of a
randomly rotated unit vector (`streamkv.codebooks.sphere_levels`). Calibration-free: the
codebook depends only on the head size and the bits.

Rotation: a seeded randomized Hadamard per layer, KV head and kind (keys, values), regenerated
from `seed` (not stored, so not counted in the bytes). Keys are the post-RoPE keys a plain cache
holds (TurboQuant quantizes the vectors being cached). Our read path dequantizes and then
attends, so the inverse rotation is applied on read; that is the same as rotating the queries
(q . R^T y = R q . y) and, for values, folding R^T into the output projection.

Fractional bits (the paper's 2.5 and 3.5, Section 4.3): the channels are split into an outlier
and a regular set and two independent TurboQuant instances (each with its own rotation, norm and
codebook) code them, the outliers at one bit more. The paper prints the 2.5-bit split as
"32 outlier channels at 3 bits, 96 at 2: (32x3 + 96x2)/128 = 2.5", which evaluates to 2.25; we
take the bit budget as the definition: half the channels of each head at b+1 bits, half at b,
exactly b + 0.5 bits per coordinate before the norms. Outlier channels are the half of each
head's channels with the largest RMS over the layer's first chunk (fixed from then on; their
indices are stored and counted).

QJL (`qjl: true`, keys only: the paper's TurboQuant_prod, Algorithm 2): a key of b bits per
coordinate is coded with the (b-1)-bit MSE quantizer, and its residual r with one more bit per
coordinate, the signs of S r for a seeded Gaussian S (m x m per head and subset, regenerated
from `seed`), plus |r| in fp16. The decoded key adds sqrt(pi/2)/m |r| S^T sign(S r), whose
inner product with any query is an unbiased estimate of <q, r>: the scores are unbiased (the
MSE quantizer alone shrinks them by about its distortion), at the price of variance. Values
keep the MSE quantizer (the paper's choice: they are averaged, not dotted with queries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from streamkv import rotation
from streamkv.codebooks import sphere_levels
from streamkv.families import head_dim_of
from streamkv.layers import Block, LayerContext, PackedLayer
from streamkv.methods.base import Method
from streamkv.methods.registry import register_method, register_preset
from streamkv.settings import Check, Problem, boolean, integer, is_number, setting
from streamkv.storage import INDEX_DTYPE, PackedTensor, encode_codebook

ALLOWED_BITS: tuple[float, ...] = (2.0, 2.5, 3.0, 3.5, 4.0)
_BITS = Check(lambda v: is_number(v) and float(v) in ALLOWED_BITS, "2 | 2.5 | 3 | 3.5 | 4", canonical=float)


@dataclass(frozen=True)
class _SubsetPlan:
    """One TurboQuant instance of a layer's keys (or values): its channels, bits and codebook."""

    bits: int
    channels: torch.Tensor | None  # int16 [c] flattened channel indices; None = all channels
    segment_of: torch.Tensor  # int16 [c]: the KV head of each channel (one vector per head)
    levels: torch.Tensor  # fp32 [2**bits]
    projection: torch.Tensor | None = None  # QJL: fp32 [H, m, m] Gaussian per head (m channels each)


@dataclass(frozen=True)
class _KindPlan:
    rotations: torch.Tensor  # [H, D, D] orthogonal, block-diagonal over the subsets of each head
    subsets: tuple[_SubsetPlan, ...]


def _seed(base: int, layer: int, kind: int, head: int, subset: int) -> int:
    """A distinct rotation seed per (layer, keys/values, head, subset), reproducible from `seed`."""
    return (((base * 4096 + layer) * 2 + kind) * 4096 + head) * 2 + subset


def outlier_channels(x: torch.Tensor, n_heads: int, n_outliers: int) -> torch.Tensor:
    """[H, n_outliers] per-head channel indices (sorted) of the largest RMS over x [B, S, H*D]."""
    rms = x.float().pow(2).mean(dim=(0, 1)).reshape(n_heads, -1)
    return rms.topk(n_outliers, dim=-1).indices.sort(dim=-1).values


class TurboQuantLayer(PackedLayer):
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        s = self.settings
        k = self._encode(self.shared("keys", lambda: self._plan(keys, s.key_bits, 0)), keys)
        v = self._encode(self.shared("values", lambda: self._plan(values, s.value_bits, 1)), values)
        self.append_block(Block(k, v))

    def _encode(self, plan: _KindPlan, x: torch.Tensor) -> PackedTensor:
        y = rotation.rotate(x, plan.rotations)  # [B, S, C] fp32, each subset rotated within itself
        parts = [encode_codebook(y if p.channels is None else y.index_select(-1, p.channels.long()),
                                 p.bits, p.levels, p.segment_of, self.n_heads, channels=p.channels,
                                 projection=p.projection)
                 for p in plan.subsets]
        return PackedTensor(parts, self.n_channels)

    def _plan(self, x: torch.Tensor, bits: float, kind: int) -> _KindPlan:
        """The layer's rotation and subsets for one kind, from the seed (and, for fractional bits,
        the outlier channels of this first chunk)."""
        h, d, dev = self.n_heads, self.head_dim, x.device
        seed, layer = self.settings.seed, self.ctx.layer_idx
        qjl = self.settings.qjl and kind == 0  # keys only: one of their bits goes to the QJL signs
        mse = 1 if qjl else 0  # bits the MSE codebook gives up

        def projection(m: int, subset: int) -> torch.Tensor | None:
            if not qjl:
                return None
            gens = [torch.Generator().manual_seed(_seed(seed, layer, 2 + kind, i, subset)) for i in range(h)]
            return torch.stack([torch.randn(m, m, generator=g) for g in gens]).to(dev)

        heads = torch.arange(h, device=dev).repeat_interleave(d).to(INDEX_DTYPE)
        if bits == int(bits):
            rot = torch.stack([rotation.randomized_hadamard(d, _seed(seed, layer, kind, i, 0)) for i in range(h)])
            b = int(bits) - mse
            whole = _SubsetPlan(b, None, heads, sphere_levels(d, b).to(dev), projection(d, 0))
            return _KindPlan(rot.to(dev), (whole,))
        low, half = math.floor(bits), d // 2
        high_idx = outlier_channels(x, h, half).cpu()  # [H, d/2] within-head indices
        mask = torch.zeros(h, d, dtype=torch.bool)
        mask.scatter_(1, high_idx, True)
        low_idx = torch.stack([torch.nonzero(~mask[i]).flatten() for i in range(h)])
        rot = torch.zeros(h, d, d)
        for i in range(h):
            for j, idx in enumerate((high_idx[i], low_idx[i])):
                rot[i][idx.unsqueeze(1), idx.unsqueeze(0)] = rotation.randomized_hadamard(
                    half, _seed(seed, layer, kind, i, j))
        offsets = (torch.arange(h) * d).unsqueeze(1)
        subsets = tuple(
            _SubsetPlan(b - mse, (idx + offsets).flatten().to(INDEX_DTYPE).to(dev),
                        torch.arange(h, device=dev).repeat_interleave(half).to(INDEX_DTYPE),
                        sphere_levels(half, b - mse).to(dev), projection(half, j))
            for j, (b, idx) in enumerate(((low + 1, high_idx), (low, low_idx))))
        return _KindPlan(rot.to(dev), subsets)

    def rotations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._shared["keys"].rotations, self._shared["values"].rotations


@register_method
@dataclass(frozen=True)
class TurboQuant(Method):
    """TurboQuant-style (MSE): random rotation per head, fp16 norm + Lloyd-Max codes of the
    rotated unit vector; fractional bits split each head's channels into two instances."""

    name = "turboquant"

    key_bits: float = setting(4.0, _BITS, "bits per key coordinate (x.5: half of each head's channels, "
                                          "the largest-RMS half, at one bit more)")
    value_bits: float = setting(4.0, _BITS, "bits per value coordinate (as key_bits)")
    seed: int = setting(0, integer(0), "seed of the random rotations (+ layer, head, kind): reproducible runs")
    qjl: bool = setting(False, boolean(), "keys: (b-1)-bit MSE codes + 1-bit QJL signs of the residual "
                                          "(TurboQuant_prod: unbiased scores)")

    def model_problems(self, model_config) -> list[Problem]:
        head_dim = head_dim_of(model_config)
        if not rotation.is_power_of_two(head_dim) or head_dim < 4:
            return [Problem("key_bits", f"the model's head_dim={head_dim} is not a power of two >= 4: the "
                                        "randomized Hadamard rotation of TurboQuant-style storage needs one",
                            ("value_bits",))]
        return []

    def make_layer(self, ctx: LayerContext) -> TurboQuantLayer:
        return TurboQuantLayer(self, ctx)

    def to_dict(self) -> dict:
        data = super().to_dict()
        if not data["qjl"]:  # added later: configs without it keep their config_id
            del data["qjl"]
        return data


for _bits in ALLOWED_BITS:
    register_preset(f"turboquant-{_bits:g}", TurboQuant, key_bits=_bits, value_bits=_bits)
    register_preset(f"turboquant-{_bits:g}-qjl", TurboQuant, key_bits=_bits, value_bits=_bits, qjl=True)
