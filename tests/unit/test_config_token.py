"""Token resolution follows the documented order (docs/configuration.md), names its source, and never leaks the value."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from dagent.cli import main
from dagent.config import load_config

# Highest first, exactly as docs/configuration.md orders them.
LEVELS = ("cli", "DAGENT_API__TOKEN", "PREFECT_API_KEY", "PREFECT__CLOUD__AGENT__AUTH_TOKEN", "token_file", "toml")
EXPECTED_SOURCE = {
    "cli": "cli",
    "DAGENT_API__TOKEN": "env:DAGENT_API__TOKEN",
    "PREFECT_API_KEY": "env:PREFECT_API_KEY",
    "PREFECT__CLOUD__AGENT__AUTH_TOKEN": "env:PREFECT__CLOUD__AGENT__AUTH_TOKEN",
    "token_file": "token_file",
    "toml": "toml",
}


def _secret(level: str) -> str:
    return f"s3cr3t-{level.lower().replace('_', '-')}"


def _setup(levels: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Path]:
    toml = ""
    if "toml" in levels:
        toml += f'token = "{_secret("toml")}"\n'
    if "token_file" in levels:
        token_file = tmp_path / "token"
        token_file.write_text(_secret("token_file") + "\n")
        token_file.chmod(0o600)
        toml += f'token_file = "{token_file}"\n'
    path = tmp_path / "agent.toml"
    path.write_text("[api]\n" + toml)
    for name in LEVELS[1:4]:
        if name in levels:
            monkeypatch.setenv(name, _secret(name))
        else:
            monkeypatch.delenv(name, raising=False)
    cli = {"api": {"token": _secret("cli")}} if "cli" in levels else {}
    return cli, path


@pytest.mark.parametrize("removed", range(len(LEVELS)))
def test_first_set_level_wins(removed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the `removed` highest levels taken away, the next level down gives the token."""
    levels = LEVELS[removed:]
    cli, path = _setup(levels, tmp_path, monkeypatch)
    loaded = load_config(cli, path)
    winner = levels[0]
    assert loaded.config.api.token is not None
    assert loaded.config.api.token.get_secret_value() == _secret(winner)
    assert loaded.sources["api.token"] == EXPECTED_SOURCE[winner]


def test_no_token_anywhere() -> None:
    """No level set: no token, source default."""
    loaded = load_config()
    assert loaded.config.api.token is None
    assert loaded.sources["api.token"] == "default"


def test_token_file_strips_trailing_newline_only(tmp_path: Path) -> None:
    """A token file's trailing newline is dropped, inner characters kept."""
    token_file = tmp_path / "t"
    token_file.write_bytes(b" pa ss\r\n")
    token_file.chmod(0o600)
    loaded = load_config({"api": {"token_file": str(token_file)}})
    assert loaded.config.api.token is not None and loaded.config.api.token.get_secret_value() == " pa ss"


def test_token_file_readable_by_others_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A world-readable token file loads, with a warning that names the file but not the token."""
    token_file = tmp_path / "t"
    token_file.write_text("s3cr3t-world\n")
    token_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="dagent"):
        load_config({"api": {"token_file": str(token_file)}})
    assert "readable by other users" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_secret_never_in_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """All six levels set: no command's output, no repr and no error text holds any of them."""
    _, path = _setup(LEVELS, tmp_path, monkeypatch)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "user:s3cr3t-auth")
    argv_token = ["-t", _secret("cli")]
    outputs = []
    for argv in (
        ["config", "show", "-c", str(path), *argv_token],
        ["config", "show", "--json", "-c", str(path), *argv_token],
        ["config", "validate", str(path), *argv_token],
        ["config", "validate", str(path), *argv_token, "--concurrency", "0", "--base-url", "bad"],
        ["plan", "nope.toml", "-c", str(path), *argv_token],
    ):
        main(argv)
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)
    loaded = load_config({"api": {"token": _secret("cli")}}, path)
    outputs += [repr(loaded.config), str(loaded.config), repr(loaded), json.dumps(loaded.show())]
    blob = "\n".join(outputs)
    assert "s3cr3t" not in blob
    assert '"api.token": "cli"' in outputs[1]


def test_bad_secret_types_do_not_echo_value(
    write_toml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret of the wrong type is reported without its value."""
    path = write_toml('[api]\ntoken = ["s3cr3t-in-list"]\nauth_string = 12345678\n')
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "api.token" in err and "api.auth_string" in err
    assert "s3cr3t" not in err and "12345678" not in err
