"""Remote daemons for tests: the host's daemon behind a TLS endpoint (stunnel, client certificates
required) and behind an sshd on 127.0.0.1, with the certificates and keys they need."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

from tests.support.infra import Unavailable, free_port, require

DOCKER_SOCKET = "/var/run/docker.sock"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise Unavailable(f"openssl {args[0]} failed: {result.stderr.strip()[-300:]}")


def certificates(folder: Path, name: str = "ca") -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as the Docker CLI names them."""
    require("openssl", "openssl")
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test {name}",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    (folder / "client.cnf").write_text("extendedKeyUsage = clientAuth\n")
    for who, extensions in (("server", "san.cnf"), ("client", "client.cnf")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}-key.pem",
                 "-out", f"{who}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                 "-days", "2", "-extfile", extensions, "-out", f"{who}.pem", cwd=folder)  # fmt: skip
    (folder / "client.pem").rename(folder / "cert.pem")
    (folder / "client-key.pem").rename(folder / "key.pem")
    return folder


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise Unavailable(f"{log.stem} did not start: {log.read_text()[-300:]}")
        time.sleep(0.1)


class TLSEndpoint:
    """stunnel on 127.0.0.1 in front of the host's Docker socket; it wants a client certificate of its CA."""

    def __init__(self, folder: Path) -> None:
        stunnel = require("stunnel4", "stunnel4")
        self.certs = certificates(folder / "certs")
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.log = folder / "stunnel.log"
        conf = folder / "stunnel.conf"
        conf.write_text(
            f"foreground = yes\npid =\noutput = {self.log}\ndebug = 5\n[docker]\n"
            f"accept = 127.0.0.1:{self.port}\nconnect = {DOCKER_SOCKET}\n"
            f"cert = {self.certs / 'server.pem'}\nkey = {self.certs / 'server-key.pem'}\n"
            f"CAfile = {self.certs / 'ca.pem'}\nverifyChain = yes\nrequireCert = yes\n"
        )
        self.process = subprocess.Popen([stunnel, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process, self.log)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class SSHEndpoint:
    """sshd on 127.0.0.1 for the current user, with a key of its own; `ssh_config` is what a client needs."""

    def __init__(self, folder: Path) -> None:
        sshd = require("sshd", "openssh-server")
        require("ssh", "openssh-client")
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        for key in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
        (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
        os.chmod(folder / "authorized_keys", 0o600)
        self.port = free_port()
        self.user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        self.log = folder / "sshd.log"
        conf = folder / "sshd_config"
        conf.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\nPermitRootLogin yes\n"
            # dial-stdio runs the docker CLI there, with the host's socket
            "SetEnv DOCKER_HOST=unix:///var/run/docker.sock\n"
        )
        # The client side: what a user's ~/.ssh/config would say.
        self.ssh_config = folder / "ssh_config"
        self.ssh_config.write_text(
            f"Host dockerhost\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
            f"  IdentityFile {folder / 'client'}\n  StrictHostKeyChecking no\n"
            f"  UserKnownHostsFile {folder / 'known_hosts'}\n  LogLevel ERROR\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        self.process = subprocess.Popen([sshd, "-D", "-e", "-f", str(conf)], stderr=self.log.open("wb"))
        _wait_port(self.port, self.process, self.log)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
