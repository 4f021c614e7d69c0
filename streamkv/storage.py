"""Packed storage of quantized key/value tokens.

A `PackedPart` holds one channel subset of a run of tokens at one bit width: codes packed
along the channel axis (so a token's row can be appended on its own) plus fp16 scales.
A `PackedTensor` is the parts that together cover every channel of those tokens (e.g. the
normal channels at 4 bits and the outlier channels at 8 bits). Nothing here keeps the
floating-point input: what a block holds is what `nbytes` reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from streamkv import quant

SCALE_DTYPE = torch.float16
INDEX_DTYPE = torch.int16  # channel indices and segment ids (C < 32768)
_FP16_MAX = 65504.0


def raw_dtype(dtype: torch.dtype) -> torch.dtype:
    """16-bit storage: the model's own dtype when it is 16-bit, else float16."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


@dataclass
class ScaleLayout:
    """How scales are shared. Scales have shape [B|1, token_groups, n_segments].

    token_group: tokens per scale row (1 = per token); None = one row for the whole part.
    segment_of: [c] segment of each stored channel (int16: metadata is counted, keep it small);
        None = one segment per channel.
    symmetric: one scale (absmax) per group; else an asymmetric grid (lo and step).
    log_scale: symmetric scales stored as 8-bit codes on a log grid (16 steps per octave)
        below a per-part fp32 reference, rounded up: half the bytes of fp16 scales, for
        per-token layouts where scale bytes are a visible share of the cache.
    """

    token_group: int | None = None
    segment_of: torch.Tensor | None = None
    n_segments: int | None = None
    symmetric: bool = True
    log_scale: bool = False
    # The one-hot [n_segments, c] matrix `_per_channel` uses on CPU: derived from segment_of,
    # made once per layout (layouts are shared by the blocks of a layer), not part of the data.
    _onehot: torch.Tensor | None = field(default=None, repr=False, compare=False)


# Log-scale codes: scale = ref * 2 ** ((code - LOG_ZERO) / LOG_STEPS). The reference is the
# part's largest scale, so codes up to LOG_ZERO cover ref * 2**-13.9 .. ref; the headroom above
# lets tokens appended later (decode) exceed it 4x before they clip.
LOG_STEPS, LOG_ZERO = 16, 223

@dataclass
class PackedPart:
    bits: int
    channels: torch.Tensor | None  # int16 [c] indices into the flattened channel axis; None = all
    n_channels: int
    layout: ScaleLayout
    data: torch.Tensor  # bits < 16: uint8 [B, T, packed]; bits == 16: float16/bf16 [B, T, c]
    scale: torch.Tensor | None  # fp16 [B|1, G, n_seg]: absmax (symmetric) or step; uint8 codes if log_scale
    lo: torch.Tensor | None  # fp16 [B|1, G, n_seg] (asymmetric only)
    scale_ref: torch.Tensor | None = None  # fp32 [1] reference of log-scale codes

    @property
    def length(self) -> int:
        return self.data.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        held = [self.data, self.scale, self.lo, self.scale_ref, self.channels, self.layout.segment_of]
        return [t for t in held if t is not None]

    def decode(self, dtype: torch.dtype) -> torch.Tensor:
        """-> [B, T, c] in `dtype` (the reference path: plain torch ops)."""
        if self.bits == 16:
            return self.data.to(dtype)
        codes = quant.unpack_bits(self.data, self.bits, self.n_channels)
        return quant.dequantize(codes, *_element_grid(self), dtype)

    def decode_into(self, out: torch.Tensor, start: int, fused: bool = False) -> None:
        """Writes the part's tokens into out[:, start:start+T] [B, T_out, C] at its channels;
        fused: one Triton kernel (streamkv.kernels) instead of `decode` and a scatter."""
        if self.n_channels == 0:
            return
        if fused and self.bits != 16:
            from streamkv import kernels

            kernels.dequantize_into(out, start, self.data, self.bits, self.n_channels, *grid(self),
                                    self.layout.segment_of, self.layout.token_group, self.channels)
            return
        write_at_channels(out, start, self.decode(out.dtype), self.channels)

    def joinable(self, other) -> bool:
        """Whether `join` can take other's tokens as they are: same channels and layout, each
        token coded on its own (16-bit, or per-token scales without a log-scale reference)."""
        lay = self.layout
        return (isinstance(other, PackedPart) and other.bits == self.bits and other.channels is self.channels
                and other.layout is lay and (self.bits == 16 or (lay.token_group == 1 and not lay.log_scale)))

    def join(self, other: PackedPart) -> None:
        """Appends the tokens of `other` (`joinable` must hold)."""
        self.data = torch.cat([self.data, other.data], dim=1)
        if self.bits != 16:
            self.scale = torch.cat([self.scale, other.scale], dim=1)
            self.lo = None if self.lo is None else torch.cat([self.lo, other.lo], dim=1)

    def extend(self, x: torch.Tensor) -> None:
        """Appends tokens x [B, t, c]: per-token scales are computed for them, a part-wide
        scale is reused as it is (values beyond it are clipped: the documented decode rule)."""
        if self.bits == 16:
            self.data = torch.cat([self.data, x.to(self.data.dtype)], dim=1)
            return
        lay = self.layout
        if lay.token_group == 1:
            new = encode(x, self.bits, lay, channels=self.channels, scale_ref=self.scale_ref)
            self.scale = torch.cat([self.scale, new.scale], dim=1)
            self.lo = None if new.lo is None else torch.cat([self.lo, new.lo], dim=1)
            self.data = torch.cat([self.data, new.data], dim=1)
            return
        if lay.token_group is not None:
            raise ValueError("only per-token or part-wide scales can be extended")
        codes = quant.quantize(x, *_element_grid(self), self.bits)
        self.data = torch.cat([self.data, quant.pack_bits(codes, self.bits)], dim=1)


def write_at_channels(out: torch.Tensor, start: int, decoded: torch.Tensor, channels: torch.Tensor | None) -> None:
    """out[:, start:start+T] at `channels` (all when None) <- decoded [B, T, c]."""
    dest = out[:, start:start + decoded.shape[1]]
    if channels is None:
        dest.copy_(decoded)
    else:  # index_copy_ is about twice as fast as an indexed assignment on the last axis (CPU)
        dest.index_copy_(-1, channels.long(), decoded)


def grid(part: PackedPart) -> tuple[torch.Tensor, torch.Tensor]:
    """The part's grid in compact form: fp32 (lo, step) [B|1, token groups, segments]."""
    lay = part.layout
    if lay.log_scale:
        scale = part.scale_ref * torch.exp2((part.scale.float() - LOG_ZERO) / LOG_STEPS)
    else:
        scale = part.scale.float()
    if lay.symmetric:
        return quant.symmetric_range(scale, part.bits)
    return part.lo.float(), scale


def _element_grid(part: PackedPart) -> tuple[torch.Tensor, torch.Tensor]:
    """The part's grid per element, (lo, step) broadcastable to codes [B, T, c]."""
    lo, step = grid(part)
    lay = part.layout
    if lay.segment_of is not None:  # segment -> channel
        lo, step = _per_channel(lo, lay), _per_channel(step, lay)
    if lay.token_group not in (None, 1):  # token group -> token
        lo = lo.repeat_interleave(lay.token_group, dim=1)
        step = step.repeat_interleave(lay.token_group, dim=1)
    return lo, step


def _per_channel(grid: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
    """fp32 [B, G, S] -> [B, G, c]: each channel's segment. On CPU a product with the one-hot
    [S, c] matrix (exact: one term is x * 1, the others exact zeros), several times faster
    there than a gather along the last axis; elsewhere the gather."""
    seg = layout.segment_of.long()
    if grid.device.type != "cpu":
        return grid.index_select(-1, seg)
    if layout._onehot is None or layout._onehot.shape[0] != grid.shape[-1]:
        onehot = torch.zeros(grid.shape[-1], seg.numel(), dtype=torch.float32)
        onehot[seg, torch.arange(seg.numel())] = 1
        layout._onehot = onehot
    return grid @ layout._onehot


def _group_reduce(x: torch.Tensor, lay: ScaleLayout, reduce: str) -> torch.Tensor:
    """x [B, T, c] -> [B, G, n_seg] max (or min) over each token group and channel segment."""
    if lay.segment_of is not None:
        seg = quant.segment_amax if reduce == "max" else quant.segment_amin
        x = seg(x, lay.segment_of.long(), lay.n_segments)
    b, t, s = x.shape
    tg = t if lay.token_group is None else lay.token_group
    if t % tg:
        raise ValueError(f"{t} tokens do not split into token groups of {tg}")
    x = x.reshape(b, t // tg, tg, s)
    return x.amax(2) if reduce == "max" else x.amin(2)


def _to_scale(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-_FP16_MAX, _FP16_MAX).to(SCALE_DTYPE)


def _to_scale_up(x: torch.Tensor) -> torch.Tensor:
    """fp16 scale rounded up, so the range it spans still covers x (no extra clipping)."""
    s = _to_scale(x)
    return torch.where(s.float() < x, torch.nextafter(s, s.new_tensor(_FP16_MAX)), s)


def encode(x: torch.Tensor, bits: int, layout: ScaleLayout, *,
           channels: torch.Tensor | None = None,
           given_range: tuple[torch.Tensor, torch.Tensor] | None = None,
           scale_ref: torch.Tensor | None = None,
           raw_dtype: torch.dtype = torch.float16,
           fused: bool = False) -> PackedPart:
    """Quantizes x [B, T, c] into a packed part.

    given_range: (lo, hi) per segment ([n_seg]) — the streaming statistics — instead of the
    range measured on x (a symmetric layout uses max(|lo|, |hi|)). Scales are rounded (up) to
    their stored format *before* the codes are computed, so dequantization uses exactly the
    grid the codes were chosen on. scale_ref: the reference of an existing log-scale part.
    fused: codes and packing in one Triton kernel (streamkv.kernels), same math.
    """
    n_channels = x.shape[-1]
    if bits == 16:
        return PackedPart(16, channels, n_channels, layout, x.to(raw_dtype).contiguous(), None, None)
    if given_range is not None:
        lo_g, hi_g = (t.float().reshape(1, 1, -1) for t in given_range)
    else:  # min/max select values, so reducing in x's dtype first is exact (and copies less)
        lo_g, hi_g = (_group_reduce(x, layout, r).float() for r in ("min", "max"))
    lo = ref = None
    if layout.symmetric and layout.log_scale:
        absmax = torch.maximum(lo_g.abs(), hi_g.abs()).clamp_min(quant.EPS)
        ref = absmax.amax().reshape(1) if scale_ref is None else scale_ref
        exponent = torch.ceil(LOG_STEPS * torch.log2(absmax / ref) - 1e-4) + LOG_ZERO
        scale = exponent.clamp(0, 255).to(torch.uint8)
    elif layout.symmetric:
        scale = _to_scale_up(torch.maximum(lo_g.abs(), hi_g.abs()))
    else:
        lo = _to_scale(lo_g)
        scale = _to_scale_up(quant.minmax_range(lo.float(), hi_g, bits)[1])
    part = PackedPart(bits, channels, n_channels, layout, torch.empty(0), scale, lo, ref)
    if fused:
        from streamkv import kernels

        part.data = kernels.quantize_pack(x, bits, *grid(part), layout.segment_of, layout.token_group,
                                          quant.packed_size(n_channels, bits))
        return part
    codes = quant.quantize(x, *_element_grid(part), bits)  # quantize computes in fp32
    part.data = quant.pack_bits(codes, bits).contiguous()
    return part


@dataclass
class CodebookPart:
    """One channel subset as indices into a non-uniform codebook, times one fp16 norm per token
    and segment (TurboQuant's layout: the codes of a rotated unit vector and that vector's norm).

    levels: fp32 [2**bits] sorted, shared by every block of a layer (so counted once).
    segment_of: int16 [c] segment (e.g. KV head) of each stored channel; a segment's channels
    are one vector: its norm is stored, its direction quantized coordinate by coordinate.
    """

    bits: int
    channels: torch.Tensor | None  # int16 [c] indices into the flattened channel axis; None = all
    n_channels: int
    levels: torch.Tensor  # fp32 [2**bits]
    segment_of: torch.Tensor  # int16 [c]
    n_segments: int
    data: torch.Tensor  # uint8 [B, T, packed] codes
    norm: torch.Tensor  # fp16 [B, T, n_seg]
    # QJL on the residual (TurboQuant_prod): S [n_seg, m, m] a seeded Gaussian per segment of m
    # channels (regenerated from a seed, so not stored bytes, like the rotations), the signs of
    # S r packed 1 bit per channel [B, T, ceil(c/8)] and |r| per token and segment (fp16).
    projection: torch.Tensor | None = None
    signs: torch.Tensor | None = None
    residual_norm: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.data.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        held = [self.data, self.norm, self.levels, self.segment_of, self.channels, self.signs, self.residual_norm]
        return [t for t in held if t is not None]

    def decode(self, dtype: torch.dtype) -> torch.Tensor:
        """-> [B, T, c] in `dtype`: level of each code times its segment's norm (plus, with QJL,
        sqrt(pi/2) / m |r| S^T sign(S r) per segment: an inner product with it is the unbiased
        estimate of the inner product with the residual r)."""
        codes = quant.unpack_bits(self.data, self.bits, self.n_channels).long()
        norm = self.norm.float().index_select(-1, self.segment_of.long())
        out = self.levels[codes] * norm
        if self.projection is not None:
            out = out + qjl_residual(self.signs, self.residual_norm, self.projection, self.n_channels)
        return out.to(dtype)

    def decode_into(self, out: torch.Tensor, start: int, fused: bool = False) -> None:
        """Writes the part's tokens into out[:, start:start+T] at its channels (plain torch ops:
        there is no fused kernel for codebook parts, `fused` is accepted and ignored)."""
        write_at_channels(out, start, self.decode(out.dtype), self.channels)

    def joinable(self, other) -> bool:
        """Whether `join` can take other's tokens as they are (same codebook, channels, projection)."""
        return (isinstance(other, CodebookPart) and other.levels is self.levels
                and other.channels is self.channels and other.bits == self.bits
                and other.projection is self.projection)

    def join(self, other: CodebookPart) -> None:
        """Appends the tokens of `other` (`joinable` must hold; each token is coded on its own)."""
        self.data = torch.cat([self.data, other.data], dim=1)
        self.norm = torch.cat([self.norm, other.norm], dim=1)
        if self.projection is not None:
            self.signs = torch.cat([self.signs, other.signs], dim=1)
            self.residual_norm = torch.cat([self.residual_norm, other.residual_norm], dim=1)

    def extend(self, x: torch.Tensor) -> None:
        """Appends tokens x [B, t, c] (each token is coded on its own, so this is exact)."""
        self.join(encode_codebook(x, self.bits, self.levels, self.segment_of, self.n_segments,
                                  channels=self.channels, projection=self.projection))


def encode_codebook(x: torch.Tensor, bits: int, levels: torch.Tensor, segment_of: torch.Tensor, n_segments: int,
                    *, channels: torch.Tensor | None = None,
                    projection: torch.Tensor | None = None) -> CodebookPart:
    """Codes x [B, T, c]: per token and segment, the norm (fp16, rounded before the direction is
    coded so decoding uses exactly it) and the nearest level of each coordinate of x / norm.
    projection [n_seg, m, m]: also QJL signs of the residual (segments of m contiguous channels)."""
    from streamkv.codebooks import nearest_level

    x = x.float()
    seg = segment_of.long()
    sq = torch.zeros(*x.shape[:-1], n_segments, dtype=torch.float32, device=x.device)
    norm = _to_scale(sq.index_add_(-1, seg, x * x).sqrt())
    unit = x / norm.float().clamp_min(quant.EPS).index_select(-1, seg)
    codes = nearest_level(unit, levels)
    part = CodebookPart(bits, channels, x.shape[-1], levels, segment_of, n_segments,
                        quant.pack_bits(codes, bits).contiguous(), norm)
    if projection is not None:
        residual = x - levels.to(x.device)[codes.long()] * norm.float().index_select(-1, seg)  # [B, T, c]
        by_seg = residual.view(*x.shape[:-1], n_segments, -1)  # segments are contiguous, m channels each
        part.residual_norm = _to_scale(by_seg.norm(dim=-1))
        z = torch.einsum("bthj,hij->bthi", by_seg, projection)  # S r per segment
        part.signs = quant.pack_bits((z >= 0).to(torch.uint8).reshape(x.shape), 1).contiguous()
        part.projection = projection
    return part


def qjl_residual(signs: torch.Tensor, residual_norm: torch.Tensor, projection: torch.Tensor,
                 n_channels: int) -> torch.Tensor:
    """[B, T, c] fp32: sqrt(pi/2) / m |r| S^T s per segment of m channels, s = +-1 the stored
    signs of S r (QJL, Zandieh et al.): E[<q, this>] = <q, r> for any q."""
    s = quant.unpack_bits(signs, 1, n_channels).float().mul_(2).sub_(1)  # [B, T, c] in {-1, +1}
    n_seg, m, _ = projection.shape
    s = s.view(*s.shape[:-1], n_seg, m)
    back = torch.einsum("bthi,hij->bthj", s, projection)  # S^T s per segment
    scale = math.sqrt(math.pi / 2) / m * residual_norm.float()  # [B, T, n_seg]
    return (back * scale.unsqueeze(-1)).reshape(*s.shape[:-2], n_channels)


@dataclass
class PackedTensor:
    """Parts covering all C channels of a run of tokens (one of K or V of one block)."""

    parts: list[PackedPart | CodebookPart]
    n_channels: int
    # storage_sizes of the parts, kept until the next extend: the cache's byte count is taken
    # after every layer update, and walking every tensor of a long history each time is slow.
    _sizes: dict | None = field(default=None, repr=False, compare=False)

    @property
    def length(self) -> int:
        return self.parts[0].length

    def decode(self, dtype: torch.dtype) -> torch.Tensor:
        """-> [B, T, C]."""
        first = self.parts[0].data
        out = torch.empty(first.shape[0], self.length, self.n_channels, dtype=dtype, device=first.device)
        self.decode_into(out, 0)
        return out

    def decode_into(self, out: torch.Tensor, start: int, fused: bool = False) -> None:
        """Writes these tokens into out[:, start:start+T] ([B, T_out, C])."""
        for part in self.parts:
            part.decode_into(out, start, fused)

    def joinable(self, other: PackedTensor) -> bool:
        """Whether every part can take the tokens of `other`'s matching part as they are."""
        return len(self.parts) == len(other.parts) and all(a.joinable(b) for a, b in zip(self.parts, other.parts))

    def join(self, other: PackedTensor) -> None:
        """Appends the tokens of `other` part by part."""
        if not self.joinable(other):
            raise ValueError("join() of parts that are not joinable")
        self._sizes = None
        for a, b in zip(self.parts, other.parts):
            a.join(b)

    def extend(self, x: torch.Tensor) -> None:
        """x [B, t, C]: appends tokens to every part (its own channels)."""
        self._sizes = None
        for part in self.parts:
            part.extend(x if part.channels is None else x.index_select(-1, part.channels.long()))

    def tensors(self) -> list[torch.Tensor]:
        return [t for part in self.parts for t in part.tensors()]

    def storage_sizes(self) -> dict[tuple[str, int], int]:
        if self._sizes is None:
            self._sizes = storage_sizes(self.tensors())
        return self._sizes

    def bits_held(self) -> int:
        return 8 * sum(self.storage_sizes().values())

    def high_precision_elements(self, high_bits: int) -> int:
        """Token x channel elements stored at `high_bits` in a part that is not all channels."""
        return sum(p.length * p.n_channels for p in self.parts
                   if p.bits == high_bits and p.channels is not None)


def storage_sizes(tensors: list[torch.Tensor]) -> dict[tuple[str, int], int]:
    """{(device, storage address): bytes} of the distinct storages behind `tensors`."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[(str(t.device), s.data_ptr())] = s.nbytes()
    return seen


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`: what the memory allocator holds."""
    return sum(storage_sizes(tensors).values())
