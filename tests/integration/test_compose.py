"""examples/compose: Postgres, a Prefect server, dagent from its image and one deployment, brought up with
Debian's docker-compose, a flow run to COMPLETED, torn down. No registry is reachable here, so the
stack's images are local stand-ins: Postgres and Python from debootstrap, Prefect from the test base."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support import infra, prefect_infra
from tests.support.helpers import REPO
from tests.support.infra import not_here
from tests.support.prefect_api import PrefectAPI

pytestmark = pytest.mark.integration

COMPOSE_DIR = REPO / "examples" / "compose"
# What the official postgres image's entrypoint does with POSTGRES_USER/PASSWORD/DB, for Debian's server.
_ENTRYPOINT = r"""#!/bin/sh
set -e
export PGDATA=/var/lib/postgresql/data
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
mkdir -p "$PGDATA" /var/run/postgresql && chown -R postgres:postgres "$PGDATA" /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
  su postgres -c "$bin/initdb -D $PGDATA -U $POSTGRES_USER --pwfile=/tmp/pw --auth-local=trust \
    --auth-host=scram-sha-256" >/dev/null
  rm /tmp/pw
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # Set up on the unix socket only: nothing sees the server before its database exists.
  su postgres -c "$bin/pg_ctl -D $PGDATA -o \"-c listen_addresses=''\" -w start" >/dev/null
  su postgres -c "$bin/createdb -h /var/run/postgresql -U $POSTGRES_USER $POSTGRES_DB"
  su postgres -c "$bin/pg_ctl -D $PGDATA -w stop" >/dev/null
fi
exec su postgres -c "exec $bin/postgres -D $PGDATA -c listen_addresses='*'"
"""


def postgres_image() -> str:
    """Debian's PostgreSQL (debootstrap) with an entrypoint that takes the official image's variables."""
    tag = "dagent-test/postgres:bookworm"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    root = Path(tempfile.mkdtemp(prefix="postgres-rootfs-"))
    try:
        infra.debootstrap(root, "postgresql")
        (root / "etc" / "resolv.conf").write_text("")
        entrypoint = root / "usr" / "local" / "bin" / "docker-entrypoint.sh"
        entrypoint.write_text(_ENTRYPOINT)
        entrypoint.chmod(0o755)
        infra.import_rootfs(root, tag, "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin",
                            'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]')  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tag


@pytest.fixture(scope="module")
def stack_images(engine: docker.DockerClient) -> Iterator[dict[str, str]]:
    infra.require("docker-compose", "docker-compose")
    try:
        images = {
            "POSTGRES_IMAGE": postgres_image(),
            "PREFECT_IMAGE": prefect_infra.prefect_base_image(),
            "DAGENT_IMAGE": f"dagent-test/agent:compose-{uuid.uuid4().hex[:6]}",
        }
        base = infra.debian_python_image()
    except infra.Unavailable as e:
        not_here(e, "the stack's images cannot be made here")
    built = subprocess.run(["bash", str(REPO / "examples/image/build.sh"), "--base", base, "--tag",
                            images["DAGENT_IMAGE"]], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    yield images
    engine.images.remove(images["DAGENT_IMAGE"], force=True)


def test_the_compose_stack_runs_a_flow_to_completed(engine: docker.DockerClient, stack_images: dict[str, str]) -> None:
    project = f"dagent-it-{uuid.uuid4().hex[:6]}"
    port = infra.free_port()
    env = {
        **os.environ, **stack_images,
        "PREFECT_PORT": str(port), "STACK_NETWORK": project, "FLOWS_IMAGE": f"{project}/flows:1",
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid), "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0",
    }  # fmt: skip
    compose = ["docker-compose", "-p", project, "-f", str(COMPOSE_DIR / "docker-compose.yml")]

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], env=env, capture_output=True, text=True, timeout=timeout)

    try:
        up = run("up", "-d", "--build")
        assert up.returncode == 0, up.stderr[-3000:]
        api = PrefectAPI(f"http://127.0.0.1:{port}/api")
        deadline = time.monotonic() + 180
        deployment = None
        while deployment is None and time.monotonic() < deadline:
            try:
                found = api.call("POST", "/deployments/filter", {"deployments": {"name": {"any_": ["hello-compose"]}}})
                deployment = found[0]["id"] if found else None
            except OSError:
                pass
            time.sleep(1)
        assert deployment is not None, run("logs", "--tail", "50").stdout[-3000:]
        run_id = api.run(deployment)
        flow_run = api.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}, 300)
        logs = run("logs", "--tail", "80", "dagent").stdout
        assert flow_run["state"]["type"] == "COMPLETED", logs[-3000:]
        said = "hello compose, from a container dagent started"
        for _ in range(30):  # the engine's log lines land a moment after its final state
            if said in " ".join(api.logs(run_id)):
                break
            time.sleep(0.5)
        assert said in " ".join(api.logs(run_id))
        workers = api.call("POST", "/work_pools/docker/workers/filter", {})
        assert [w["name"] for w in workers] == ["dagent-1"] and workers[0]["status"] == "ONLINE"
    finally:
        down = run("down", "-v", "--rmi", "local", timeout=300)
        for container in engine.containers.list(all=True, filters={"label": "dagent.agent=dagent-1"}):
            container.remove(force=True)
    assert down.returncode == 0, down.stderr[-2000:]
