import pytest

from dreamengine.errors import ConfigError
from dreamengine.schedules import schedule_value, validate_schedule


def test_constant_and_ramps():
    assert schedule_value(0.5, 123) == 0.5
    assert schedule_value([0.0, 1.0, 100], 50) == pytest.approx(0.5)
    assert schedule_value([0.0, 1.0, 100], 500) == 1.0
    spec = [10, 2.0, 8.0, 40]
    assert [schedule_value(spec, s) for s in (0, 10, 25, 40, 99)] == pytest.approx([2.0, 2.0, 5.0, 8.0, 8.0])
    # ProlificDreamer's step switch
    assert schedule_value([5000, 0.98, 0.5, 5001], 5000) == 0.98
    assert schedule_value([5000, 0.98, 0.5, 5001], 5001) == 0.5


def test_invalid_schedules_name_the_key():
    for bad in ("abc", [1, 2], [1, "a", 3], True, [5, 1.0, 2.0, 1]):
        with pytest.raises(ConfigError, match="guidance.x"):
            validate_schedule(bad, "guidance.x")
    validate_schedule(None, "guidance.x", allow_none=True)
