"""`pfi mss sim` is registered and parses its options (the servers themselves are tested elsewhere)."""

import pytest

from engine.cli import build_parser
from engine.commands.mss import _users, run_sim


def test_sim_command_parses_options():
    args = build_parser().parse_args(
        ["mss", "sim", "--user", "pfi@h.mssante.fr:pw", "--reject", "x@y.fr", "--imap-port", "9993"]
    )
    assert args.handler is run_sim
    assert (args.imap_port, args.reject) == (9993, ["x@y.fr"])
    assert _users(args.user) == {"pfi@h.mssante.fr": "pw"}


def test_sim_user_option_needs_a_password():
    with pytest.raises(SystemExit):
        _users(["no-password@h.mssante.fr"])
