"""The job/run state machine refuses every move its table does not list; the spec validates."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from scheduler.spec import JobSpec
from scheduler.states import (
    JOB_TRANSITIONS,
    RUN_TRANSITIONS,
    IllegalTransition,
    JobState,
    RunState,
    transition,
)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(JobState, JobState)))
def test_job_transitions_follow_the_table(current, target):
    if target in JOB_TRANSITIONS[current]:
        assert transition(current, target) is target
    else:
        with pytest.raises(IllegalTransition, match=f"from {current} to {target}"):
            transition(current, target)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(RunState, RunState)))
def test_run_transitions_follow_the_table(current, target):
    if target in RUN_TRANSITIONS[current]:
        assert transition(current, target) is target
    else:
        with pytest.raises(IllegalTransition):
            transition(current, target)


def test_the_contract_moves_are_allowed_and_ends_are_final():
    for path in (["queued", "placed", "leased", "running", "succeeded"],
                 ["queued", "placed", "leased", "running", "failed", "queued"],
                 ["queued", "placed", "queued"], ["queued", "placed", "leased", "queued"],
                 ["queued", "placed", "leased", "running", "queued"]):
        for a, b in itertools.pairwise(path):
            transition(JobState(a), JobState(b))
    assert not JOB_TRANSITIONS[JobState.SUCCEEDED]
    assert not JOB_TRANSITIONS[JobState.CANCELLED]
    with pytest.raises(IllegalTransition):
        transition(JobState.SUCCEEDED, JobState.QUEUED)


def test_a_job_state_never_moves_to_a_run_state():
    with pytest.raises(IllegalTransition):
        transition(JobState.PLACED, RunState.LEASED)  # type: ignore[type-var]


def test_spec_from_yaml_like_data_and_bad_input_names_the_field():
    spec = JobSpec.model_validate({
        "project": "llm", "tasks": 2, "accelerators_per_task": 8,
        "constraints": {"models": ["910B"], "domestic_only": True, "max_price": "9.50"},
        "payload": {"command": ["python", "train.py"], "image": "registry/x:1"},
    })
    assert spec.accelerators == 16
    assert str(spec.constraints.max_price) == "9.50"
    with pytest.raises(ValidationError, match="accelerators_per_task"):
        JobSpec.model_validate({"project": "p", "accelerators_per_task": 0,
                                "payload": {"command": ["x"]}})
    with pytest.raises(ValidationError, match="max_price"):
        JobSpec.model_validate({"project": "p", "constraints": {"max_price": "1.234"},
                                "payload": {"command": ["x"]}})
    with pytest.raises(ValidationError, match="command"):
        JobSpec.model_validate({"project": "p", "payload": {"command": []}})
