"""Remote daemons: the host's daemon behind a real TLS endpoint (client certificates required) and
behind a real sshd, reached as an operator would configure dagent for them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import remote
from tests.support.helpers import Dagent
from tests.support.infra import Unavailable, not_here


@pytest.fixture(scope="module")
def tls_endpoint(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[remote.TLSEndpoint]:
    try:
        endpoint = remote.TLSEndpoint(tmp_path_factory.mktemp("tls"))
    except Unavailable as e:
        not_here(e, "no TLS endpoint can run here")
    yield endpoint
    endpoint.stop()


def _tls_config(dagent: Dagent, url: str, certs: Path, **tls: str) -> Path:
    table = "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    return dagent.config(f'[docker]\nbase_url = "{url}"\nkeep_containers = "never"\n[docker.tls]\n{table}')


def _echo(dagent: Dagent, image: str, config: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    run = dagent.run_file("remote", image=image, command=["echo", "hello over the wire"])
    result = dagent("run", str(run), "-c", str(config), "--logs", env=env)
    return result.returncode, result.stdout + result.stderr


def test_a_daemon_over_tls_with_client_certificates(
    dagent: Dagent, image: str, tls_endpoint: remote.TLSEndpoint
) -> None:
    certs = tls_endpoint.certs
    config = _tls_config(dagent, tls_endpoint.url, certs, ca_cert=str(certs / "ca.pem"),
                         client_cert=str(certs / "cert.pem"), client_key=str(certs / "key.pem"))  # fmt: skip
    code, out = _echo(dagent, image, config)
    assert code == 0, out
    assert "hello over the wire" in out


def test_the_daemons_ca_wins_over_requests_ca_bundle(
    dagent: Dagent, image: str, tls_endpoint: remote.TLSEndpoint, tmp_path: Path
) -> None:
    """Many machines set REQUESTS_CA_BUNDLE machine-wide; requests would use it instead of docker.tls.ca_cert."""
    other = remote.certificates(tmp_path / "other", "other")
    certs = tls_endpoint.certs
    config = _tls_config(dagent, tls_endpoint.url, certs, ca_cert=str(certs / "ca.pem"),
                         client_cert=str(certs / "cert.pem"), client_key=str(certs / "key.pem"))  # fmt: skip
    bundle = str(other / "ca.pem")
    code, out = _echo(dagent, image, config, env={"REQUESTS_CA_BUNDLE": bundle, "CURL_CA_BUNDLE": bundle})
    assert code == 0, out


def test_the_docker_clis_environment_is_enough(dagent: Dagent, image: str, tls_endpoint: remote.TLSEndpoint) -> None:
    """DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as set for the docker CLI, and nothing else."""
    config = dagent.config('[docker]\nkeep_containers = "never"\n')
    env = {"DOCKER_HOST": tls_endpoint.url, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tls_endpoint.certs)}
    code, out = _echo(dagent, image, config, env=env)
    assert code == 0, out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong CA", "the daemon's certificate is not signed by docker.tls.ca_cert"),
        ("no client certificate", "the daemon wants a client certificate (docker.tls.client_cert)"),
    ],
)
def test_tls_failures_are_one_clear_line(
    dagent: Dagent, image: str, tls_endpoint: remote.TLSEndpoint, tmp_path: Path, case: str, expected: str
) -> None:
    certs = tls_endpoint.certs
    if case == "wrong CA":
        other = remote.certificates(tmp_path / "other", "other")
        tls = {
            "ca_cert": str(other / "ca.pem"),
            "client_cert": str(certs / "cert.pem"),
            "client_key": str(certs / "key.pem"),
        }
    else:
        tls = {"ca_cert": str(certs / "ca.pem")}
    table = "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    config = dagent.config(f'[retry]\nattempts = 1\n[docker]\nbase_url = "{tls_endpoint.url}"\n[docker.tls]\n{table}')
    run = dagent.run_file("remote", image=image, command=["true"])
    result = dagent("run", str(run), "-c", str(config))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_a_missing_certificate_file_is_a_config_error(dagent: Dagent, image: str, tmp_path: Path) -> None:
    config = dagent.config(f'[docker]\nbase_url = "tcp://127.0.0.1:1"\n[docker.tls]\nca_cert = "{tmp_path}/nope.pem"\n')
    run = dagent.run_file("remote", image=image, command=["true"])
    result = dagent("run", str(run), "-c", str(config))
    assert result.returncode == 2 and f"docker.tls.ca_cert: {tmp_path}/nope.pem: no such file" in result.stderr


def test_a_daemon_over_ssh(dagent: Dagent, image: str, tmp_path: Path) -> None:
    """ssh://: the ssh command (as the docker CLI uses it) runs `docker system dial-stdio` on the far side."""
    try:
        endpoint = remote.SSHEndpoint(tmp_path / "ssh")
    except Unavailable as e:
        not_here(e, "no sshd can run here")
    try:
        # What an operator's ~/.ssh/config does, given to ssh on the command line.
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {endpoint.ssh_config} "$@"\n')
        (bin_dir / "ssh").chmod(0o755)
        # docker-py passes `-p 22` unless the URL names a port, so a port in ~/.ssh/config is not enough.
        url = f"ssh://dockerhost:{endpoint.port}"
        config = dagent.config(f'[docker]\nbase_url = "{url}"\nkeep_containers = "never"\n')
        code, out = _echo(dagent, image, config, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert code == 0, out + endpoint.log.read_text()[-500:]
        assert "hello over the wire" in out
    finally:
        endpoint.stop()
