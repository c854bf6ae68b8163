"""Run files load with the config's error quality; host paths are resolved at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagent.cli import main
from dagent.errors import RunFileError
from dagent.runs import load_run_file


def _write(tmp_path: Path, text: str, name: str = "r1.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_field(tmp_path: Path) -> None:
    """All fields of a run file load into RunRequest."""
    path = _write(
        tmp_path,
        'id = "job-1"\nimage = "local/busybox:latest"\ncommand = ["sh", "-c", "exit 0"]\nentrypoint = "/bin/sh -c"\n'
        'env = {A = "1"}\nlabels = ["gpu"]\nvolumes = ["/tmp:/data:ro"]\nnetwork = "flows"\ncpus = 1.5\nmemory = "512m"\n'
        'shm_size = "1g"\ngpus = "all"\ndevices = ["/dev/null:/dev/x:r"]\nports = ["127.0.0.1:8080:80/udp"]\n'
        'timeout = 30\nworking_dir = "/work"\nuser = "1000:1000"\nprivileged = true\ncap_add = ["NET_ADMIN"]\n'
        'pid = "host"\nipc = "host"\n',
    )
    run = load_run_file(path)
    assert run.id == "job-1" and run.command == ("sh", "-c", "exit 0") and run.entrypoint == ("/bin/sh", "-c")
    assert run.memory == 512 * 1024**2 and run.shm_size == 1024**3 and run.gpus == "all" and run.cpus == 1.5
    assert run.labels == ("gpu",) and run.ports == ("127.0.0.1:8080:80/udp",) and run.timeout == 30


def test_id_defaults_to_file_name(tmp_path: Path) -> None:
    """A run file without an id takes its file name."""
    assert load_run_file(_write(tmp_path, 'image = "busybox"\n', "nightly-etl.toml")).id == "nightly-etl"


def test_host_paths_are_kept_as_written(tmp_path: Path) -> None:
    """A run file's host paths are resolved when judged (dagent.hostview), not when loaded."""
    run = load_run_file(_write(tmp_path, f'image = "busybox"\nvolumes = ["{tmp_path}/link/../link:/d", "named:/n"]\n'))
    assert [m.source for m in run.volumes] == [f"{tmp_path}/link/../link", "named"]


BAD_RUNS = [
    ('image = "busybox"\nfoo = 1\n', "foo: unknown key"),
    ('image = "busybox"\ncomand = ["x"]\n', "comand: unknown key; did you mean 'command'"),
    ('id = "x"\n', "image: Field required"),
    ('image = "UPPER/case"\n', "image"),
    ('id = "../escape"\nimage = "busybox"\n', "id: run id"),
    ('image = "busybox"\nenv = {"1X" = "y"}\n', "env.1X"),
    ('image = "busybox"\nvolumes = ["rel/path:/x"]\n', "volumes.0"),
    ('image = "busybox"\nvolumes = ["/x:rel"]\n', "volumes.0"),
    ('image = "busybox"\ncpus = 0\n', "cpus"),
    ('image = "busybox"\nmemory = "lots"\n', "memory"),
    ('image = "busybox"\ngpus = 0\n', "gpus"),
    ('image = "busybox"\ndevices = ["dev/x"]\n', "devices.0"),
    ('image = "busybox"\nports = ["99999:80"]\n', "ports.0"),
    ('image = "busybox"\ntimeout = -1\n', "timeout"),
    ('image = "busybox"\nworking_dir = "rel"\n', "working_dir"),
    ('image = "busybox"\npid = "container:x"\n', "pid"),
    ('image = "busybox"\ncommand = "unterminated \'quote"\n', "command"),
    ('image = "busybox"\nprivileged = "yes please"\n', "privileged"),
    ("image = [\n", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_RUNS)
def test_bad_run_file(text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad run file: `dagent plan` exits 2 naming the file and key path, no traceback."""
    path = _write(tmp_path, text)
    with pytest.raises(RunFileError):
        load_run_file(path)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err and "Traceback" not in err


def test_missing_run_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A run file that does not exist: exit 2."""
    assert main(["plan", "nope.toml"]) == 2
    assert "nope.toml: cannot read" in capsys.readouterr().err
