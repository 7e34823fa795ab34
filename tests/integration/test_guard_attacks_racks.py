"""Racks that share one filesystem, against a real dockerd with `--authorization-plugin=volagent`
and the guard on: `<rack>-<app>` names one directory for rack `r1` with app `east-x` and for
rack `r1-east` with app `x`. The serving agent plays a host of each rack in turn (restarted
with the other `rack` in its config, over the same mount); the victim, app `x` of rack
`r1-east`, keeps a secret in its directory."""

from __future__ import annotations

import json
import os

import pytest

from tests.integration.test_guard_attacks_routes import (
    assert_refused,
    body_of,
    create_raw,
    created_then_started,
    leaked,
)
from tests.testbed import Containers, app_labels
from tests.testbed.guarded import VICTIM_SECRET, Guarded

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"


def _serve_as_rack(bed: Guarded, rack: str) -> None:
    agent = bed.agent
    assert agent is not None
    agent.config["rack"] = rack
    agent.rack = rack
    agent.write_config()
    agent.restart()
    agent.wait_for(lambda d: d["mount"]["state"] in ("mounted", "local"), what="the mount")


def test_an_app_of_a_shorter_rack_naming_a_dashed_racks_directory(
    bed: Guarded, ctr: Containers
) -> None:
    agent = bed.agent
    assert agent is not None
    rack = agent.rack
    try:
        _serve_as_rack(bed, f"{rack}-east")
        theirs = agent.ns("x", "web", "data")
        writer = ctr.run(
            [f"{theirs}:/data"],
            labels={**app_labels("x", "web", owner=OWNER), "volagent.test": "1"},
            env=[f"S={VICTIM_SECRET}"],
            command=["sh", "-c", 'echo "$S" > /data/secret'],
        )
        assert ctr.wait(writer) == 0, ctr.logs(writer)
        ctr.remove(writer)
        assert os.path.exists(os.path.join(theirs, "secret"))

        _serve_as_rack(bed, rack)
        mine = agent.ns("east-x", "web", "data")
        assert mine == theirs
        status, answer = create_raw(
            bed,
            body_of(
                {"Binds": [f"{mine}:/data"]},
                labels={**app_labels("east-x", "web", owner=OWNER), "volagent.test": "1"},
            ),
        )
        if status == 201:
            cid = json.loads(answer)["Id"]
            got = created_then_started(ctr, cid) and leaked(ctr, cid)
            assert not got, "app east-x of rack r1 read app x of rack r1-east's secret"
        assert_refused(status, answer)
        assert "belongs to app x of rack" in answer.decode()
    finally:
        if agent.rack != rack:
            _serve_as_rack(bed, rack)
