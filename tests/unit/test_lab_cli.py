"""`python -m lab` answers a wrong lab name with the rule, not a traceback."""
import pytest

from lab.__main__ import main


@pytest.mark.parametrize("argv", [["down", "nosuchlab"], ["down", "TP3F9A"]])
def test_a_bad_lab_name_is_exit_status_2_with_the_rule(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: invalid lab name") and "4 hex digits" in err
