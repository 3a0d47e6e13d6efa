"""The command line as an operator meets it: its help, check-config, the client commands' defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from gputuned.cli import build_parser, main

EXAMPLE = Path(__file__).parents[2] / "systemd" / "gputuned.toml"


def test_the_help_lists_operator_commands_first_and_hides_the_internal_ones(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    listed = [word for word in ("run", "status", "restart", "install", "worker", "load", "sweep") if f"\n    {word} " in text]
    assert listed == ["run", "status", "restart", "install", "worker", "load", "sweep"]
    assert text.index("\n    install ") < text.index("\n    worker ")
    assert "triton-adapter" not in text and "Thin: parses" not in text
    hidden = build_parser().parse_args(["triton-adapter", "--model", "m", "--control-socket", "/run/a.sock"])
    assert hidden.command == "triton-adapter"  # still there for the daemon to start


def test_check_config_names_the_file_it_checked_and_fails_on_a_missing_one(tmp_path, capsys):
    assert main(["check-config", "--config", str(EXAMPLE)]) == 0
    checked = capsys.readouterr().out.splitlines()
    assert checked[0] == f"{EXAMPLE}: configuration is valid"
    assert checked[1].startswith("note: it names no worker, so gputuned monitors only and changes nothing")
    assert main(["check-config", "--config", str(EXAMPLE.parents[1] / "scripts" / "demo.toml")]) == 0
    assert "note:" not in capsys.readouterr().out
    missing = tmp_path / "nowhere.toml"
    assert main(["check-config", "--config", str(missing)]) == 2
    assert f"no config file at {missing}" in capsys.readouterr().err


def test_sweep_finds_the_daemons_admin_socket_as_the_other_client_commands_do():
    args = build_parser().parse_args(["sweep", "max_batch_size=1,2", "--config", str(EXAMPLE)])
    assert args.socket is None and args.config == EXAMPLE  # resolved to RUNTIME_DIR/admin.sock, as for status and set


def test_status_refuses_a_watch_interval_that_is_not_positive(tmp_path, capsys):
    assert main(["status", "--socket", str(tmp_path / "admin.sock"), "--watch", "0"]) == 2
    assert "--watch takes a positive number of seconds" in capsys.readouterr().err
