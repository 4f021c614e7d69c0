"""benchmarks/decode_speed.py runs end to end (tiny model, CPU): every row, interleaved, with
the compressed caches' measured bytes below the uncompressed one's."""

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def decode_speed():
    return load_benchmark("decode_speed")


def test_prints_every_row_with_ratios(decode_speed, capsys, one_thread_module):
    assert decode_speed.main(["--model", "tiny-random-llama", "--lengths", "64", "--chunk-size", "16",
                              "--steps", "2", "--repeats", "1", "--dense", "--window", "16",
                              "--configs", "streamkv-4", "kivi-4", "--codes"]) == 0
    out = capsys.readouterr().out
    rows = {r[1]: r for r in (line.split() for line in out.splitlines()) if r and r[0] == "64"}
    expected = ["dynamic", "none", "streamkv-4", "kivi-4", "none/dense", "streamkv-4/dense", "kivi-4/dense",
                "streamkv-4/codes", "kivi-4/codes"]  # codes: Triton's interpreter here
    assert list(rows)[:9] == expected
    assert float(rows["dynamic"][3]) == 1.0  # the ratio column is against dynamic
    assert all(float(r[2]) > 0 for r in rows.values())
    mb = {name: float(r[5]) for name, r in rows.items() if r[5] != "-"}
    assert mb["streamkv-4"] < mb["none"] < mb["dynamic"]  # 4-bit < 16-bit < the fp32 plain cache
    assert mb["streamkv-4/dense"] == mb["streamkv-4"] == mb["streamkv-4/codes"]  # the read path changes no stored byte
    if "hf-quanto-4" in rows:  # its codes live outside keys/values: measured by the HF baseline
        assert 0 < mb["hf-quanto-4"] <= mb["dynamic"]  # 64 tokens: inside its 128-token residual
