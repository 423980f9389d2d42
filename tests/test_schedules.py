"""lambda_anchor schedule: warmup at 0, linear ramp, constant target."""

import pytest

from crab.training.schedules import lambda_anchor_at


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.0), (99, 0.0), (100, 0.0), (125, 0.05), (150, 0.1), (175, 0.15), (200, 0.2), (201, 0.2), (10**6, 0.2)],
)
def test_warmup_then_linear_ramp_then_constant(step, expected):
    assert lambda_anchor_at(step, target=0.2, warmup_steps=100, ramp_steps=100) == pytest.approx(expected)


def test_no_warmup_no_ramp_is_constant():
    assert [lambda_anchor_at(s, 0.1, 0, 0) for s in (0, 1, 50)] == [0.1, 0.1, 0.1]


def test_warmup_without_ramp_jumps_to_target():
    assert [lambda_anchor_at(s, 0.3, 10, 0) for s in (0, 9, 10, 11)] == [0.0, 0.0, 0.3, 0.3]


def test_ramp_without_warmup_starts_at_zero():
    assert [lambda_anchor_at(s, 1.0, 0, 4) for s in (0, 1, 2, 4, 5)] == [0.0, 0.25, 0.5, 1.0, 1.0]
