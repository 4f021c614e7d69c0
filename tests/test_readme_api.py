"""The README's Python API as written: the seed's quick start runs verbatim (with the local
SmolLM2 folder for the hub id), and the settings tables are the ones the code generates."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.conftest import requires_smollm2

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_settings_tables_are_the_generated_ones():
    from streamkv.methods.__main__ import markdown

    block = README.split("<!-- methods:begin -->\n", 1)[1].split("\n<!-- methods:end -->", 1)[0]
    assert block == markdown()


def quick_start() -> str:
    api = README.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", api, re.S).group(1)


@pytest.mark.slow
@requires_smollm2
def test_the_seeds_quick_start_runs_verbatim(smollm2):
    from streamkv.loading import _cache_folder

    code = quick_start()
    assert 'CompressedLlamaForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf", compression_config=config)' in code
    local = str(_cache_folder("smollm2-135m"))  # the safetensors folder load_model wrote
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace("meta-llama/Llama-2-7b-hf", local), "README quick start", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["avg key bits", "avg value bits", "outlier ratio"]
    key_bits, value_bits = (float(line.split()[-1]) for line in lines[:2])
    # A 56-token cache: the 8-bit sink block and per-block scales weigh more than in a long one.
    assert 4.0 < key_bits < 16.0 and 4.0 < value_bits < 16.0 and lines[2].endswith("%")
