"""Packed parts: what is stored is really packed, and decodes within half a step."""

import pytest
import torch

from streamkv.quant import packed_size
from streamkv.storage import PackedTensor, ScaleLayout, encode, storage_bytes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_token_groups_roundtrip(bits, symmetric):
    torch.manual_seed(bits)
    x = torch.randn(2, 9, 32) * 3
    seg = torch.arange(32) // 8
    part = encode(x, bits, ScaleLayout(token_group=1, segment_of=seg, n_segments=4, symmetric=symmetric))
    assert part.data.dtype == torch.uint8 and part.data.shape == (2, 9, packed_size(32, bits))
    assert part.scale.dtype == torch.float16 and part.scale.shape == (2, 9, 4)
    y = part.decode(torch.float32)
    if symmetric:
        step = 2 * x.abs().view(2, 9, 4, 8).amax(-1) / (2**bits - 1)
    else:
        xv = x.view(2, 9, 4, 8)
        step = (xv.amax(-1) - xv.amin(-1)) / (2**bits - 1)
    bound = step.repeat_interleave(8, dim=-1) * 0.5 * 1.002 + 1e-3
    assert bool(((y - x).abs() <= bound).all())


def test_per_channel_given_scale_clips_and_extends():
    x = torch.tensor([[[1.0, -2.0], [0.5, 0.5]]])
    part = encode(x, 4, ScaleLayout(), given_range=(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])))
    part.extend(torch.tensor([[[3.0, 1.0]]]))  # 3.0 is beyond the fixed scale 1.0: clipped
    y = part.decode(torch.float32)
    assert y.shape == (1, 3, 2)
    assert y[0, 2, 0].item() == pytest.approx(1.0, abs=1e-3)
    assert (y[0, :2] - x[0]).abs().max().item() <= 2 * 2.0 / 15 / 2 + 1e-3


def test_sixteen_bits_is_raw():
    x = torch.randn(1, 4, 8)
    part = encode(x, 16, ScaleLayout(), raw_dtype=torch.bfloat16)
    assert part.data.dtype == torch.bfloat16
    assert torch.equal(part.decode(torch.float32), x.to(torch.bfloat16).float())


def test_split_parts_cover_all_channels_and_bytes_are_measured():
    torch.manual_seed(1)
    x = torch.randn(1, 16, 8)
    out_idx = torch.tensor([2, 5], dtype=torch.int16)
    norm_idx = torch.tensor([0, 1, 3, 4, 6, 7], dtype=torch.int16)
    normal = encode(x[..., norm_idx.long()], 4, ScaleLayout(), channels=norm_idx)
    outl = encode(x[..., out_idx.long()], 8, ScaleLayout(), channels=out_idx)
    packed = PackedTensor([normal, outl], 8)
    y = packed.decode(torch.float32)
    assert (y - x).abs()[..., out_idx.long()].max() < (y - x).abs()[..., norm_idx.long()].max()
    expected = (16 * packed_size(6, 4) + 16 * packed_size(2, 8)  # codes
                + 2 * (6 + 2)  # fp16 per-channel scales
                + 2 * (6 + 2))  # int16 channel indices
    assert storage_bytes(packed.tensors()) == expected
    assert packed.high_precision_elements(8) == 16 * 2


def test_storage_bytes_counts_shared_storage_once():
    base = torch.zeros(100, dtype=torch.uint8)
    assert storage_bytes([base[:10], base[50:], base]) == 100


def test_log_scale_codes_cover_the_range_and_halve_scale_bytes():
    torch.manual_seed(2)
    x = torch.randn(2, 50, 64) * torch.logspace(-2, 2, 50).view(1, 50, 1)  # 4 decades < 13.9 octaves
    layout = ScaleLayout(token_group=1, segment_of=torch.zeros(64, dtype=torch.int16), n_segments=1)
    fp16 = encode(x, 4, layout)
    log8 = encode(x, 4, ScaleLayout(token_group=1, segment_of=layout.segment_of, n_segments=1,
                                    log_scale=True))
    assert log8.scale.dtype == torch.uint8 and log8.scale.numel() == fp16.scale.numel()
    absmax = x.abs().amax(-1, keepdim=True)
    err = (log8.decode(torch.float32) - x).abs()
    # A log-grid scale is rounded up by at most 2**(1/16): the step grows by <= 4.4%.
    assert bool((err <= absmax * 2 / 15 / 2 * 2 ** (1 / 16) * 1.001).all())
    # Appended tokens reuse the part's reference.
    log8.extend(x[:, :3] * 2)
    assert log8.length == 53
    assert (log8.decode(torch.float32)[:, 50:] - 2 * x[:, :3]).abs().max() <= 2 * absmax.max() / 15
