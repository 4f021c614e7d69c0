"""Bad input is refused before any work: models (their config, not their weights), method
settings that do not fit a model, data files, the store's URL, the number of units and paths
that lead outside the working folder, each problem named with its path in the spec."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from transformers import GPT2Config

from cluster.checks import preflight, store_url_problem
from cluster.spec import SpecError, check_size, parse_spec
from store.paths import absolute_store

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
ROW = {"input": "q", "context": "c", "answers": ["a"], "length": 3, "dataset": "trec", "language": "en",
       "all_classes": ["a", "b"], "_id": "x-1"}


def spec(tmp_path, **changes):
    data = {"models": ["tiny-random-llama"], "presets": ["none"],
            "datasets": [{"task": "wikitext2_ppl", "context_length": 128, "limit": 1}],
            "store": {"url": f"sqlite:///{tmp_path / 'x.db'}", "blobs": str(tmp_path / "blobs")}}
    data.update(changes)
    return parse_spec(data, base_dir=tmp_path)


def problems(s) -> list[str]:
    with pytest.raises(SpecError) as err:
        preflight(s)
    return err.value.problems


def test_a_good_spec_passes(tmp_path):
    preflight(spec(tmp_path))


def test_models_are_checked_from_their_config(tmp_path):
    gpt2 = tmp_path / "gpt2"
    GPT2Config(n_embd=64, n_layer=2, n_head=4).save_pretrained(gpt2)
    found = problems(spec(tmp_path, models=["tiny-random-llama", "/nonexistent/model", str(gpt2)],
                          grid={"value_quant_groups": [3, 4], "chunk_size": 64}))
    # tiny-random-llama has head_dim 16: 3 groups do not divide it, 4 do.
    assert found[0] == ("grid value_quant_groups=3,chunk_size=64 on models[0] tiny-random-llama: value_quant_groups: "
                        "3 must divide the model's head_dim=16 (allowed: 0 or a divisor of 16)")
    assert found[1].startswith("models[1]: cannot read the config of model '/nonexistent/model'")
    assert found[2].startswith("models[2]: model type 'gpt2' is not supported: its attention has no rotary")
    assert len(found) == 3


def test_data_files_are_read_and_validated_once(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "trec.jsonl").write_text(json.dumps(ROW) + "\n{not json\n")
    (tmp_path / "surrogate").mkdir()
    (tmp_path / "surrogate" / "trec.jsonl").write_text(json.dumps({**ROW, "_id": "\ud800"}) + "\n")
    found = problems(spec(tmp_path, datasets=[{"task": "trec", "source": "bad"}]))
    assert "datasets[0] (trec): " in found[0] and "line 2: invalid JSON" in found[0]
    found = problems(spec(tmp_path, datasets=[{"task": "trec", "source": "surrogate"}]))
    assert "field '_id': not valid Unicode text (surrogates not allowed" in found[0]


def test_store_urls_are_parsed(tmp_path):
    assert "'mysql' databases are not supported" in store_url_problem("mysql://u@h/db")
    assert "'notaurl' is not a database URL" in store_url_problem("notaurl")
    assert store_url_problem("postgresql+psycopg://u:p@127.0.0.1:5432/db") is None
    found = problems(spec(tmp_path, store={"url": "mysql://u@h/db"}))
    assert found == ["store.url: 'mysql' databases are not supported (allowed: sqlite:///PATH or "
                     "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)"]


def test_the_number_of_units_is_capped_before_any_write(tmp_path):
    big = spec(tmp_path, shards=1_000_000)
    with pytest.raises(SpecError, match=r"1000000 units \(configs x models x tasks x shards\) is more than 100000"):
        check_size(big)
    check_size(big, max_units=2_000_000)


def test_a_relative_source_may_not_leave_the_working_folder(tmp_path):
    (tmp_path.parent / "outside.txt").write_text("text")
    with pytest.raises(SpecError, match=r"datasets\[0\].source: '../outside.txt' leads outside"):
        spec(tmp_path, datasets=[{"task": "wikitext2_ppl", "source": "../outside.txt"}])
    spec(tmp_path, datasets=[{"task": "wikitext2_ppl", "source": str(tmp_path.parent / "outside.txt")}])


def test_relative_store_paths_are_the_callers(tmp_path):
    url, blobs = absolute_store("sqlite:///results/x.db", "results/blobs", cwd=tmp_path)
    assert url == f"sqlite:///{tmp_path}/results/x.db" and blobs == f"{tmp_path}/results/blobs"
    assert absolute_store("postgresql+psycopg://h/db", "s3://b/p") == ("postgresql+psycopg://h/db", "s3://b/p")


def test_the_cli_refuses_every_problem_before_any_database_exists(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "models": ["tiny-random-llama"], "points": [{"value_quant_groups": 3}, {"key_bits_normal": 4.0}],
        "datasets": [{"task": "wikitext2_ppl", "context_length": 1024}],
        "store": {"url": f"sqlite:///{tmp_path / 'never.db'}", "blobs": str(tmp_path / "blobs")}}))
    proc = subprocess.run([sys.executable, "-m", "cluster.sweep", str(path), "--no-isolate"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "points[1].key_bits_normal: 4.0 is out of range (allowed: 2 | 3 | 4 | 8 | 16)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "blobs").exists()
    path.write_text(path.read_text().replace("- key_bits_normal: 4.0\n", ""))
    proc = subprocess.run([sys.executable, "-m", "cluster.sweep", str(path), "--no-isolate"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "value_quant_groups: 3 must divide the model's head_dim=16" in proc.stderr
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "blobs").exists()
