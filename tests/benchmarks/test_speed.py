"""benchmarks/speed.py runs end to end (tiny model, CPU) and its kernel check compares paths."""

import pytest
import torch

from streamkv import preset
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


def test_prints_every_row_with_ratios(speed, capsys, one_thread_module):
    assert speed.main(["--model", "tiny-random-llama", "--lengths", "64", "--chunk-size", "16",
                       "--repeats", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("64 ")]
    assert [r[1] for r in rows] == ["full", "chunked-none", "streamkv-4"]
    # measured cache bytes against the fp32 plain cache: 16-bit storage halves it, 4-bit packs more
    assert float(rows[1][5]) == pytest.approx(0.5, abs=0.02)
    assert 0 < float(rows[2][5]) < 0.3


def test_kernel_check_finds_the_paths_equal(speed, one_thread_module):
    pytest.importorskip("triton")  # interpreted on CPU (tests/conftest.py)
    from streamkv.loading import load_model

    model = load_model("tiny-random-llama").model
    ids = torch.randint(0, model.config.vocab_size, (1, 80), generator=torch.Generator().manual_seed(0))
    assert speed.check_kernels(model, ids, preset("streamkv-4", chunk_size=16)) < 1e-5
