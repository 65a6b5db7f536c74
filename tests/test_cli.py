"""Command lines end a user error with one clear line and exit status 2; --debug keeps the traceback."""

import pytest

from helpers.lib import cli


def failing(argv):
    raise FileNotFoundError(f"/nope: no such checkpoint directory ({argv})")


def test_user_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.run(failing, ["--x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: /nope: no such checkpoint directory (['--x'])\n"


def test_debug_shows_the_traceback():
    with pytest.raises(FileNotFoundError):
        cli.run(failing, ["--debug"])


def test_success_exits_with_mains_status():
    with pytest.raises(SystemExit) as e:
        cli.run(lambda argv: 3, [])
    assert e.value.code == 3
    with pytest.raises(SystemExit) as e:
        cli.run(lambda argv: "a path", [])
    assert e.value.code == 0


def test_a_bug_keeps_its_traceback():
    def bug(argv):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        cli.run(bug, [])
