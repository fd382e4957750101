"""The `cmt` command's error contract: a CmtError is one line (exit 2), anything else is a bug that
keeps its traceback."""

import pytest

from cmtlib import cli
from cmtlib.errors import CmtError, CmtLookupError, UnknownNameError
from cmtlib.models.registry import create_model


def test_a_user_error_is_one_line_with_exit_2(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert cli.main(["evaluate", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cmt: error: ") and str(missing) in err[0]
    assert "Traceback" not in capsys.readouterr().err


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    with pytest.raises(CmtError, match="no_such_run"):
        cli.main(["--debug", "evaluate", str(tmp_path / "no_such_run")])


def test_a_programming_error_is_not_hidden(monkeypatch, tmp_path):
    """A KeyError from a bug (not a CmtError) must reach the user with its traceback, not as
    'cmt: error: category_id'."""

    def broken(args):
        return {}["category_id"]

    monkeypatch.setattr(cli, "_cmd_check", broken)
    with pytest.raises(KeyError, match="category_id"):
        cli.main(["data", "check", str(tmp_path / "m.csv")])


def test_lookup_errors_are_key_errors_with_a_plain_message():
    with pytest.raises(KeyError) as info:
        create_model("cmtnett")
    assert isinstance(info.value, UnknownNameError) and isinstance(info.value, CmtLookupError)
    # str() of a plain KeyError quotes its text; ours reads as the sentence it is.
    assert str(info.value).startswith("unknown model 'cmtnett'; registered models: ")
