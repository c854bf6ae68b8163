"""Image references parse as Docker parses them; registry names normalise."""

from __future__ import annotations

import pytest

from dagent.images import names_reference, normalize_registry, parse_image


@pytest.mark.parametrize(
    ("reference", "registry", "path", "tag", "explicit"),
    [
        ("busybox", "docker.io", "busybox", None, False),
        ("local/busybox:latest", "docker.io", "local/busybox", "latest", False),
        ("library/busybox:1.36", "docker.io", "library/busybox", "1.36", False),
        ("docker.io/library/busybox", "docker.io", "library/busybox", None, True),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", None, True),
        ("registry-1.docker.io/x/y", "docker.io", "x/y", None, True),
        ("127.0.0.1:5000/flows/etl:1", "127.0.0.1:5000", "flows/etl", "1", True),
        ("localhost/x", "localhost", "x", None, True),
        ("localhost:5000/x:tag", "localhost:5000", "x", "tag", True),
        ("Registry.Example.com/x", "registry.example.com", "x", None, True),
        ("registry.example.com.evil.net/x", "registry.example.com.evil.net", "x", None, True),
        ("evil.net/registry.example.com/x", "evil.net", "registry.example.com/x", None, True),
        ("host:5000/a/b/c", "host:5000", "a/b/c", None, True),
        ("[::1]:5000/x", "[::1]:5000", "x", None, True),
    ],
)
def test_parse(reference: str, registry: str, path: str, tag: str | None, explicit: bool) -> None:
    """Registry, path and tag come out as Docker would read them."""
    ref = parse_image(reference)
    assert (ref.registry, ref.path, ref.tag, ref.explicit_registry) == (registry, path, tag, explicit)


def test_digest() -> None:
    """A digest is kept apart from the tag."""
    ref = parse_image("127.0.0.1:5000/x@sha256:" + "a" * 64)
    assert ref.digest == "sha256:" + "a" * 64 and ref.tag is None and ref.registry == "127.0.0.1:5000"


@pytest.mark.parametrize(
    "reference",
    [
        "",
        " busybox",
        "UPPER/case",
        "registry.example.com@evil.net/x",
        "x:",
        "x@sha256:short",
        "a//b",
        "-x",
        "x:bad tag",
    ],
)
def test_invalid(reference: str) -> None:
    """References Docker would refuse are refused."""
    with pytest.raises(ValueError):
        parse_image(reference)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Docker.IO", "docker.io"), ("index.docker.io", "docker.io"), ("registry-1.docker.io/", "docker.io"),
     ("127.0.0.1:5000", "127.0.0.1:5000"), ("Reg.Example.com", "reg.example.com")],
)  # fmt: skip
def test_normalize_registry(name: str, expected: str) -> None:
    """Registry names are lower case and Docker Hub has one name."""
    assert normalize_registry(name) == expected


@pytest.mark.parametrize("name", ["https://r.example.com", "r.example.com/path", "bad host", "h:0", "h:65536", ""])
def test_normalize_registry_refuses(name: str) -> None:
    """URLs, paths and bad ports are not registry names."""
    with pytest.raises(ValueError):
        normalize_registry(name)


def test_pull_progress_counts_layers_and_bytes_over_the_stream() -> None:
    """The daemon's events are per layer; one line sums them (as a long pull is logged every few seconds)."""
    from dagent.images import PullProgress

    progress = PullProgress()
    for event in [
        {"status": "Pulling from flows/base", "id": "3"},
        {"status": "Pulling fs layer", "id": "a"},
        {"status": "Pulling fs layer", "id": "b"},
        {"status": "Already exists", "id": "c"},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 1_000_000, "total": 4_000_000}},
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 500_000, "total": 2_000_000}},
    ]:
        progress.add(event)
    assert str(progress) == "1/3 layers, 1.5 of 6.0 MB downloaded"
    progress.add({"status": "Download complete", "id": "a"})
    progress.add({"status": "Pull complete", "id": "a"})
    progress.add({"status": "Digest: sha256:00", "id": None})
    assert str(progress) == "2/3 layers, 4.5 of 6.0 MB downloaded"


@pytest.mark.parametrize(
    ("reference", "names", "by_name"),
    [
        ("busybox", ["busybox:latest"], True),
        ("docker.io/library/busybox:latest", ["busybox:latest"], True),
        ("127.0.0.1:5000/x:1", ["127.0.0.1:5000/x:1"], True),
        ("x@sha256:" + "ab" * 32, ["x@sha256:" + "ab" * 32], True),
        ("0123456789ab", ["127.0.0.1:6000/evil:1"], False),  # an ID prefix
        ("sha256:" + "ab" * 32, ["evil:1"], False),
        ("busybox:1", ["busybox:latest"], False),
        ("abcdef", [], False),
    ],
)
def test_names_reference_tells_a_name_from_an_id(reference: str, names: list[str], by_name: bool) -> None:
    assert names_reference(names, reference) is by_name
