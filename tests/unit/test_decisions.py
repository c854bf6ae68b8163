"""The Prefect source's decisions at a run's end and at a restart, by tables (dagent.sources.prefect.decisions)."""

from __future__ import annotations

from typing import Any

import pytest

from dagent.contracts import RunResult
from dagent.sources.prefect.decisions import EndAction, end_by_result, end_by_state, recover_action

ME, OTHER = "me", "other"
NOTE = f"Claimed by dagent agent {ME!r}"


def _result(outcome: str, code: int | None, **kw: Any) -> RunResult:
    return RunResult("r1", outcome, code, "c1", "t0", "t1", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("result", "action"),
    [
        (_result("timed-out", 137, error="after 60 s"),
         EndAction("crash", "dagent stopped the container after its timeout (after 60 s); exit code 137")),
        (_result("crashed", None, error="docker: no such image"),
         EndAction("crash", "dagent could not run the container: docker: no such image", label=True)),
        (_result("failed", 1), EndAction("crash", "the container exited with code 1")),
        (_result("failed", 137, why="was killed for running out of memory (limit 64 MiB)", tail=("a", "b" * 400)),
         EndAction("crash", "the container was killed for running out of memory (limit 64 MiB); its last line: "
                   + "b" * 300)),
        (_result("succeeded", 0), None),  # the state decides
        (_result("cancelled", 143), None),
        (_result("cancelled", None), None),  # stopped before its container ran: still the state's
    ],
)  # fmt: skip
def test_a_result_that_says_it_all(result: RunResult, action: EndAction | None) -> None:
    assert end_by_result(result) == action


@pytest.mark.parametrize(
    ("outcome", "state", "action"),
    [
        ("cancelled", {"type": "CANCELLING"}, EndAction("cancel")),
        ("cancelled", {"type": "RUNNING"}, EndAction("cancel")),
        ("cancelled", {}, EndAction("cancel")),
        ("cancelled", {"type": "COMPLETED"}, EndAction("leave")),  # its engine ended it first
        ("cancelled", {"type": "CRASHED"}, EndAction("leave")),
        ("succeeded", {"type": "COMPLETED"}, EndAction("leave")),
        ("succeeded", {"type": "FAILED"}, EndAction("leave")),
        ("succeeded", {"type": "PAUSED"}, EndAction("leave")),  # suspended, to resume later
        ("succeeded", {"type": "PENDING", "message": "Claimed by dagent agent 'other'"},
         EndAction("put_back", other=OTHER)),
        ("succeeded", {"type": "PENDING", "message": NOTE},
         EndAction("crash", "the container exited with code 0 but the flow run is PENDING")),
        ("succeeded", {"type": "PENDING", "message": "a worker's"},
         EndAction("crash", "the container exited with code 0 but the flow run is PENDING")),
        ("succeeded", {"type": "RUNNING"},
         EndAction("crash", "the container exited with code 0 but the flow run is RUNNING")),
        ("succeeded", {}, EndAction("crash", "the container exited with code 0 but the flow run is not final")),
    ],
)  # fmt: skip
def test_an_end_the_state_decides(outcome: str, state: dict[str, Any], action: EndAction) -> None:
    assert end_by_state(_result(outcome, 0 if outcome == "succeeded" else 143), state, ME) == action


HOST = "host-a"


def _run(kind: str, message: str = "", pid: str = "") -> dict[str, Any]:
    return {"id": "r1", "state": {"type": kind, "message": message, "id": "s1"}, "infrastructure_pid": pid}


@pytest.mark.parametrize(
    ("flow_run", "owned", "has_container", "live", "stands", "action"),
    [
        # This agent's container is on the daemon: adopt it, whatever Prefect says.
        (_run("RUNNING", pid=f"{HOST}:abc"), True, True, ["abc123"], None, "resume"),
        (_run("PENDING", NOTE), True, True, [], None, "resume"),
        # Claimed by this agent, no container: ask whether the claim stands first.
        (_run("PENDING", NOTE), False, False, [], None, "ask_claim"),
        (_run("PENDING", NOTE), False, False, [], True, "resume"),  # never started: run it now
        (_run("PENDING", NOTE), False, False, [], False, "leave"),  # stepped back from an ended run
        (_run("PENDING", NOTE, f"{HOST}:abc"), False, False, [], True, "crash"),  # started here, gone
        # Its container is gone from this host's daemon, whoever started it.
        (_run("RUNNING", pid=f"{HOST}:abc"), False, False, ["def"], None, "crash"),
        (_run("CANCELLING", pid=f"{HOST}:abc"), False, False, [], None, "crash"),
        (_run("RUNNING", pid=f"{HOST}:abc"), False, True, ["abc123"], None, "leave"),  # still there: not ours
        # Another host's, or Prefect's worker's (its pid is a URL), or another's claim: not ours to touch.
        (_run("RUNNING", pid="host-b:abc"), False, False, [], None, "leave"),
        (_run("RUNNING", pid="http+docker://localhost:abc"), False, False, [], None, "leave"),
        (_run("PENDING", "Claimed by dagent agent 'other'"), False, False, [], None, "leave"),
        (_run("RUNNING"), False, False, [], None, "leave"),
    ],
)  # fmt: skip
def test_what_a_restart_does_with_a_run(
    flow_run: dict[str, Any], owned: bool, has_container: bool, live: list[str], stands: bool | None, action: str
) -> None:
    assert recover_action(flow_run, owned, has_container, NOTE, HOST, live, stands) == action
