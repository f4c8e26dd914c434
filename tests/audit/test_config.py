"""``[audit]`` settings that contradict each other are refused at load, naming the keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bastion.audit.config import AuditConfig
from bastion.settings import Settings


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"max_wait": 0.5, "commit_timeout": 0.5}, "max_wait"),
        ({"max_wait": 1.0, "commit_timeout": 0.2}, "max_wait"),
        ({"loss_window": 10.0}, "loss_window"),
        ({"loss_window": 30.0, "commit_timeout": 30.0}, "loss_window"),
    ],
)
def test_a_commit_timeout_within_the_batch_wait_is_refused(
    values: dict[str, float], named: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings.model_validate({"audit": values})
    message = str(raised.value)
    assert "audit" in message
    assert "commit_timeout" in message
    assert named in message


@pytest.mark.parametrize(
    "values",
    [{}, {"max_wait": 0.5, "commit_timeout": 0.6}, {"loss_window": 30.0, "commit_timeout": 31.0}],
)
def test_coherent_waits_are_accepted(values: dict[str, float]) -> None:
    config = AuditConfig.model_validate(values)
    assert config.commit_timeout > max(config.max_wait, config.loss_window)
