"""Fixtures of the store tests: a fresh database per test (SQLite file, or a new PostgreSQL
database when STREAMKV_TEST_POSTGRES_URL is set), a blob store, config dicts and result
factories. The store knows no compression method, so configs are plain dicts here
(`config_dict`), never streamkv.config objects."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from store import BlobStore, SampleRow, UnitKey, UnitResult, create_store_engine  # noqa: E402
from streamkv.hashing import content_id  # noqa: E402

PG_ENV = "STREAMKV_TEST_POSTGRES_URL"
PG_SKIP_REASON = ("set STREAMKV_TEST_POSTGRES_URL (scripts/start_postgres.sh) to run the "
                  "PostgreSQL tests")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine | None]:
    """AUTOCOMMIT engine on the server of STREAMKV_TEST_POSTGRES_URL (None when unset)."""
    url = os.environ.get(PG_ENV)
    if not url:
        yield None
        return
    admin = create_engine(make_url(url).set(drivername="postgresql+psycopg"),
                          isolation_level="AUTOCOMMIT")
    yield admin
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: Engine | None) -> Iterator[str]:
    """URL of an empty database of its own: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if pg_admin is None:
        pytest.skip(PG_SKIP_REASON)
    name = f"skv_{uuid.uuid4().hex[:16]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield make_url(os.environ[PG_ENV]).set(database=name).render_as_string(hide_password=False)
    with pg_admin.connect() as conn:
        # FORCE: a test may leave a killed client's backend behind.
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_store_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
Config = dict[str, Any]


def config_dict(method: str = "streamkv", chunk_size: int | None = 512,
                quantize_current_chunk: bool = False, **fields: Any) -> Config:
    """A config as workers hand it to the store: the common fields plus the method's own."""
    return {"method": method, "chunk_size": chunk_size,
            "quantize_current_chunk": quantize_current_chunk, **fields}


def cid(config: Config) -> str:
    """The config_id of a config dict."""
    return content_id(config)


# Shapes of the configs the old tests took from streamkv.config.baseline (only the fields the
# tests read); the store sees nothing special in them.
NONE = config_dict("none", key_bits_normal=16, value_bits_normal=16)
INT8 = config_dict("int8", key_bits_normal=8, value_bits_normal=8)
KIVI2 = config_dict("kivi", key_bits_normal=2, value_bits_normal=2, group_size=32,
                    residual_length=128)


def streamkv_config(bits: int = 4, **fields: Any) -> Config:
    return config_dict("streamkv", **{
        "key_bits_normal": bits, "value_bits_normal": bits,
        "value_quant_groups": 1 if bits >= 4 else 4, "pre_rope_keys": True,
        "sink_protection": True, "outlier_detection": True, "ema_decay": 0.9,
        "outlier_threshold_abs": None, **fields})


def build_result(key: UnitKey, config: Config, *, score: float = 0.5,
                 n_samples: int = 4, tag: str = "", metrics: dict[str, float] | None = None,
                 trace_rows: int = 8, minute: int = 0) -> UnitResult:
    """A plausible UnitResult; `tag` varies predictions and trace content between writers."""
    samples = [SampleRow(sample_id=f"s{i:03d}", prediction=f"pred {tag} {i}", answers=[f"a{i}"],
                         score=float(i % 2), prompt_tokens=100 + i, extra={"tag": tag})
               for i in range(n_samples)]
    trace = pa.table({"layer": pa.array(range(trace_rows), pa.int32()),
                      "channel": pa.array([i * 3 for i in range(trace_rows)], pa.int32()),
                      "tag": [tag] * trace_rows})
    return UnitResult(
        key=key, config=dict(config), method=config["method"],
        metrics=metrics if metrics is not None else {"score": score, "perplexity": 9.5,
                                                     "kl": 0.01, "top1_agreement": 0.97},
        n_samples=n_samples, avg_key_bits=4.2, avg_value_bits=4.1, kv_bytes=1_000_000,
        fp16_kv_bytes=3_800_000, compression_ratio=3.8, outlier_ratio=0.03,
        prefill_tokens_per_s=1234.5, decode_tokens_per_s=45.6, peak_memory_bytes=2**30,
        environment={"model_id": key.model_id, "git_commit": "deadbeef", "seed": 0,
                     "device": "cpu", "versions": {"torch": "2.13.0"}},
        samples=samples, traces={"outlier_channels": trace}, worker=f"worker-{tag}",
        device="cpu", started_at=T0 + timedelta(minutes=minute),
        finished_at=T0 + timedelta(minutes=minute, seconds=30))


@pytest.fixture
def make_result() -> Callable[..., UnitResult]:
    return build_result


def sweep_keys(sweep_id: str, configs: list[Config], models: list[str],
               tasks: list[str], n_shards: int) -> list[UnitKey]:
    return [UnitKey(sweep_id, m, cid(c), t, f"{i}/{n_shards}")
            for m in models for c in configs for t in tasks for i in range(n_shards)]


@pytest.fixture
def small_sweep() -> dict[str, Any]:
    """Two configs (none, streamkv-2) x one model x one task x 2 shards."""
    configs = [NONE, streamkv_config(2)]
    return {"sweep_id": "sw", "configs": configs,
            "keys": sweep_keys("sw", configs, ["m"], ["t"], 2)}
