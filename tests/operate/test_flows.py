"""The per-stage flows and prefect.yaml agree with the registry (no server needed; the
deployment run itself is tests/operate/test_prefect_stack.py)."""

from __future__ import annotations

import importlib

import yaml

from flows.stages import DEFAULT_POLICY, FLOWS, POLICIES
from tasks import PROJECT_ROOT
from tasks.registry import STAGES


def test_every_stage_has_a_flow_with_its_retries_and_timeout() -> None:
    assert set(FLOWS) == set(STAGES)
    for stage, flow in FLOWS.items():
        policy = POLICIES.get(stage, DEFAULT_POLICY)
        assert flow.name == f"clipmill-{stage}"
        assert flow.retries == policy.retries and flow.timeout_seconds == policy.timeout_s
        assert {"overrides", "force", "pull", "push", "experiment"} <= set(
            flow.parameters.properties
        )


def test_every_prefect_yaml_entrypoint_is_a_flow_with_limit_and_pool() -> None:
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    assert spec["definitions"]["work_pools"]["clipmill"]["name"] == "clipmill"
    for deployment in spec["deployments"]:
        path, _, attr = deployment["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr)
        assert flow.name.startswith("clipmill-"), deployment
        assert deployment["concurrency_limit"] == 1
        assert deployment["work_pool"]["name"] == "clipmill"
        assert deployment["parameters"] == {"pull": True, "push": True}
