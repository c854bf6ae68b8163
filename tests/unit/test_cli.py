"""The `dagent` command as a user runs it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import pytest

from dagent.cli import build_parser, main
from dagent.flags import CONFIG_FLAGS


@pytest.mark.parametrize("command", [["start"], ["config", "show"], ["config", "validate"]])
def test_every_config_flag_is_accepted(command: list[str]) -> None:
    """start, config show and config validate accept every configuration flag."""
    parser = build_parser()
    for flag in CONFIG_FLAGS:
        argv = [*command, flag.flags[0]]
        if flag.kind not in ("true", "false", "never"):
            argv.append("K=V" if flag.kind == "kv" else "1")
        parser.parse_args(argv)


def test_seed_flags_keep_their_spelling() -> None:
    """Prefect 1's `prefect agent start docker` flags still parse with the same meaning."""
    args = build_parser().parse_args(
        ["start", "-n", "a", "-l", "x", "-l", "y", "-e", "K=V", "-v", "/a:/b", "--network", "n", "--base-url",
         "tcp://127.0.0.1:2375", "--no-pull", "--max-polls", "3", "--show-flow-logs", "--agent-address",
         "127.0.0.1:8080", "--no-cloud-logs", "-t", "tok"]
    )  # fmt: skip
    from dagent.flags import cli_overrides

    assert cli_overrides(args) == {
        "name": "a",
        "labels": ["x", "y"],
        "max_polls": "3",
        "show_flow_logs": True,
        "api": {"token": "tok", "send_agent_logs": False},
        "docker": {"base_url": "tcp://127.0.0.1:2375", "pull": "never", "volumes": ["/a:/b"], "network": "n",
                   "env": {"K": "V"}},
        "health": {"address": "127.0.0.1:8080"},
    }  # fmt: skip


def test_show_text_marks_sources(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`config show` prints `key = value  # source` lines."""
    monkeypatch.setenv("DAGENT_NAME", "from-env")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert 'name = "from-env"  # env' in out and "concurrency = 4  # default" in out
