"""Issue 5 acceptance: with `[health] unhealthy_after_s` set, an agent whose mount stays
critical reports its instance Unhealthy to its Auto Scaling group (moto), once; off by
default, an agent in the same state leaves the group alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.testbed import AgentFactory, AgentProcess, unixhttp
from tests.testbed.aws import REGION, ZONE, Imds, moto_reset

pytestmark = [pytest.mark.mount]

NO_DOCKER = "unix:///nonexistent/docker.sock"


def health_of(autoscaling: Any, instance_id: str) -> str:
    found = autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
    return str(found["AutoScalingInstances"][0]["HealthStatus"])


@pytest.fixture
def group(moto_url: str) -> tuple[Any, str]:
    """An Auto Scaling group with one instance in moto; (autoscaling client, instance id)."""
    moto_reset(moto_url)
    kw: dict[str, Any] = {"region_name": REGION, "endpoint_url": moto_url}
    ec2, autoscaling = boto3.client("ec2", **kw), boto3.client("autoscaling", **kw)
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName="rack-hosts",
        LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.micro"},
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="rack",
        LaunchTemplate={"LaunchTemplateName": "rack-hosts"},
        MinSize=1,
        MaxSize=1,
        DesiredCapacity=1,
        AvailabilityZones=[ZONE],
    )
    [instance] = autoscaling.describe_auto_scaling_instances()["AutoScalingInstances"]
    return autoscaling, str(instance["InstanceId"])


@pytest.fixture
def instance_imds(group: tuple[Any, str]) -> Iterator[Imds]:
    emulator = Imds(instance_id=group[1])
    emulator.up()
    try:
        yield emulator
    finally:
        emulator.down()


def never_mounting(
    agent_factory: AgentFactory, moto_url: str, imds_url: str, **health: float
) -> AgentProcess:
    """An agent whose EFS does not exist: its mount stays critical."""
    return agent_factory(
        docker_url=NO_DOCKER,
        config={
            "mount": {"type": "nfs4", "file_system_id": "fs-0badc0de"},
            "aws": {"imds_endpoint": imds_url, "endpoint_url": moto_url},
            "health": health,
        },
    ).start()


def reports(agent: AgentProcess) -> float:
    status, body = unixhttp.request(agent.socket_path, "GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "volagent_asg_reports_total" and s.labels.get("result") == "reported":
                return float(s.value)
    return 0.0


def test_a_mount_critical_for_long_reports_the_instance_once(
    agent_factory: AgentFactory,
    moto_url: str,
    group: tuple[Any, str],
    instance_imds: Imds,
) -> None:
    autoscaling, instance_id = group
    agent = never_mounting(agent_factory, moto_url, instance_imds.url, unhealthy_after_s=1)
    doc = agent.wait_for(
        lambda d: any("reported Unhealthy" in w for w in d["warnings"]),
        what="the Auto Scaling report",
    )
    assert doc["status"] == "critical"
    assert instance_id in next(w for w in doc["warnings"] if "reported Unhealthy" in w)
    assert health_of(autoscaling, instance_id) == "Unhealthy"
    time.sleep(2)  # more ticks of the same episode: no second report
    assert reports(agent) == 1
    assert any(e.get("event") == "asg_reported_unhealthy" for e in agent.log_events())


def test_off_by_default(
    agent_factory: AgentFactory,
    moto_url: str,
    group: tuple[Any, str],
    instance_imds: Imds,
) -> None:
    autoscaling, instance_id = group
    agent = never_mounting(agent_factory, moto_url, instance_imds.url)
    agent.wait_for(lambda d: d["mount"]["error"], what="the mount to fail")
    time.sleep(2)
    assert reports(agent) == 0
    assert health_of(autoscaling, instance_id) == "Healthy"
