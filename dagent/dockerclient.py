"""docker-py clients for the configured daemon: its URL, its TLS (the Docker CLI's rules) and its timeout."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagent.config import AgentConfig
from dagent.errors import ConfigError

if TYPE_CHECKING:
    import docker
    from docker.tls import TLSConfig


def tls_files(config: AgentConfig) -> dict[str, Path | None] | None:
    """The CA, certificate and key TLS uses (explicit files win over `cert_path`); None without TLS."""
    tls, url = config.docker.tls, config.docker.base_url
    # As the Docker CLI: TLS is for network daemons; a unix socket ignores DOCKER_TLS_VERIFY.
    if not (url.startswith("https://") or (url.startswith(("tcp://", "http://")) and tls.on)):
        return None
    if tls.enabled is False:
        return None
    folder = tls.cert_path or (Path.home() / ".docker" if tls.enabled else None)

    def pick(given: Path | None, name: str) -> Path | None:
        if given is not None:
            return given
        return folder / name if folder is not None and (folder / name).exists() else None

    return {
        "ca_cert": pick(tls.ca_cert, "ca.pem"),
        "client_cert": pick(tls.client_cert, "cert.pem"),
        "client_key": pick(tls.client_key, "key.pem"),
    }


def tls_config(config: AgentConfig) -> TLSConfig | None:
    """docker-py's TLSConfig for the daemon, or None; ConfigError naming the key when a file is missing."""
    files = tls_files(config)
    if files is None:
        return None
    for key, path in files.items():
        if path is not None and not path.is_file():
            raise ConfigError(f"docker.tls.{key}: {path}: no such file")
    if (files["client_cert"] is None) != (files["client_key"] is None):
        raise ConfigError("docker.tls: a client certificate needs its key (cert.pem and key.pem in cert_path)")
    from docker.tls import TLSConfig

    cert = (str(files["client_cert"]), str(files["client_key"])) if files["client_cert"] else None
    ca = str(files["ca_cert"]) if files["ca_cert"] else None
    return TLSConfig(
        client_cert=cert, ca_cert=ca, verify=ca if (config.docker.tls.verify and ca) else config.docker.tls.verify
    )


def _url(config: AgentConfig, tls: TLSConfig | None) -> str:
    url = config.docker.base_url
    if tls is not None and url.startswith(("tcp://", "http://")):
        return "https://" + url.split("://", 1)[1]
    return url


# The oldest API version dagent speaks; the daemon's own is asked for once the session is set up.
_FIRST_VERSION = "1.24"


def _own_trust(api: Any, version: str) -> None:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set machine-wide on many hosts) replace a
    # session's own CA on every request; the daemon's CA must win, so the environment is not consulted.
    # docker-py's version="auto" asks before the caller could say so: ask here, after.
    api.trust_env = False
    api._version = api._retrieve_server_version() if version == "auto" else version


def _ssh(config: AgentConfig) -> bool:
    """ssh:// goes through the ssh command (keys, agent, ~/.ssh/config and known_hosts as the Docker CLI's)."""
    if not config.docker.base_url.startswith("ssh://"):
        return False
    if shutil.which("ssh") is None:
        raise ConfigError("docker.base_url: ssh:// needs the ssh command on PATH (Debian: openssh-client)")
    if importlib.util.find_spec("paramiko") is None:  # docker-py's ssh transport imports it even to shell out
        raise ConfigError("docker.base_url: ssh:// needs dagent's ssh extra: pip install 'dagent[ssh]'")
    return True


def _import_docker(ssh: bool) -> None:
    """docker-py, imported without paramiko unless the daemon is reached over ssh://.

    docker-py imports paramiko (and with it cryptography: about 18 MB of an idle agent's memory) for
    its ssh transport whatever the URL, whenever paramiko is installed. A first import with paramiko
    hidden leaves that transport out; an ssh:// client made later puts it back."""
    if "docker" not in sys.modules and not ssh and "paramiko" not in sys.modules:
        sys.modules["paramiko"] = None  # type: ignore[assignment]  # makes `import paramiko` fail
        try:
            import docker  # noqa: F401  # the first import is the one that decides
        finally:
            sys.modules.pop("paramiko", None)
    from docker.api import client as api_client_module

    if ssh and not hasattr(api_client_module, "SSHHTTPAdapter"):
        from docker.transport.sshconn import SSHHTTPAdapter

        api_client_module.SSHHTTPAdapter = SSHHTTPAdapter  # type: ignore[attr-defined]


def import_docker(config: AgentConfig) -> None:
    """Import docker-py as this configuration needs it (see _import_docker); call before any other import of it."""
    _import_docker(_ssh(config))


def client(config: AgentConfig, version: str = "auto") -> docker.DockerClient:
    """A DockerClient for docker.base_url with docker.tls and docker.timeout."""
    ssh = _ssh(config)
    _import_docker(ssh)
    import docker

    tls = tls_config(config)
    made = docker.DockerClient(
        base_url=_url(config, tls), version=_FIRST_VERSION, timeout=round(config.docker.timeout), tls=tls or False,
        use_ssh_client=ssh,
    )  # fmt: skip
    _own_trust(made.api, version)
    return made


def api_client(config: AgentConfig, version: str, timeout: int) -> docker.APIClient:
    """A low-level APIClient for the same daemon (health pings with a short timeout)."""
    ssh = _ssh(config)
    _import_docker(ssh)
    import docker

    tls = tls_config(config)
    made = docker.APIClient(
        base_url=_url(config, tls), version=_FIRST_VERSION, timeout=timeout, tls=tls or False,
        use_ssh_client=ssh,
    )  # fmt: skip
    _own_trust(made, version)
    return made
