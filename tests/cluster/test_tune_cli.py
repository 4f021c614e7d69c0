"""`streamkv tune`: an invalid spec is refused with every problem listed before anything runs
(no store created, no Ray started); --dry-run shows the parameters Tune will sample."""

from __future__ import annotations

import yaml

from cluster.cli import main

SPEC = {
    "model": "tiny-random-llama",
    "base": {"preset": "streamkv-3", "chunk_size": 64},
    "space": {"layer_key_bits": {"per_layer": [2, 4], "groups": 2}, "ema_decay": {"uniform": [0.5, 0.99]}},
    "data": {"context_length": 128, "shards": 4, "search_shards": [0, 1], "holdout_shards": [2, 3]},
    "constraint": {"max_avg_bits": 4.0},
}


def write(tmp_path, data) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_invalid_spec_lists_every_problem_and_runs_nothing(tmp_path, capsys):
    db = tmp_path / "s.db"
    bad = {**SPEC, "typo": 1, "space": {"chunk_size": {"choice": []}, "nope": {"int": [1, 2]}},
           "constraint": {"max_avg_bits": 1.0}}
    assert main(["tune", write(tmp_path, bad), "--db", f"sqlite:///{db}", "--storage", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "invalid search spec, nothing was run" in err
    for words in ("typo: unknown key", "space.chunk_size.choice: [] is an empty range",
                  "space.nope: unknown field", "constraint.max_avg_bits: 1 cannot be met"):
        assert words in err, err
    assert not db.exists() and not (tmp_path / "t").exists()


def test_model_dependent_problems_are_refused_before_anything_runs(tmp_path, capsys):
    db = tmp_path / "s.db"
    bad = {**SPEC, "space": {"layer_key_bits": {"per_layer": [2, 4], "groups": 9}},
           "constraint": {"max_cache_bytes": 100}}
    assert main(["tune", write(tmp_path, bad), "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert "space.layer_key_bits.groups: 9 > the model's num_hidden_layers=2" in err
    assert "constraint.max_cache_bytes: 100 cannot be met" in err
    assert not db.exists()


def test_dry_run_names_the_sampled_parameters(tmp_path, capsys):
    assert main(["tune", write(tmp_path, SPEC), "--dry-run", "--db", f"sqlite:///{tmp_path / 's.db'}"]) == 0
    out = capsys.readouterr().out
    assert "parameters: layer_key_bits.g0, layer_key_bits.g1, ema_decay" in out
