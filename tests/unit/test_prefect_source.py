"""PrefectSource's branches against a routing transport (no server): claims, backlog, cancel, recovery,
stale deployments, and many threads at once."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from dagent.config import load_config
from dagent.contracts import Claim, ContainerInfo, RunResult
from dagent.errors import SourceUnavailable
from dagent.sources.prefect import PrefectSource, listing
from dagent.sources.prefect import fleet as fleet_module
from dagent.sources.prefect import lookups as lookups_module
from dagent.sources.prefect import roster as roster_module
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.listing import ScheduledRuns
from dagent.sources.prefect.pace import Pace
from dagent.sources.prefect.preparing import Pool
from tests.support.fakes import FakeClock, RoutingTransport

NAME = "unit"
NOTE = f"Claimed by dagent agent {NAME!r}"


def _config() -> Any:
    return load_config(
        {"name": NAME, "source": "prefect", "api": {"url": "http://prefect.test/api"}}, environ={}
    ).config


def _source(
    handler: Callable[[str, str, Any], tuple[int, Any]], clock: FakeClock | None = None, **api: Any
) -> tuple[PrefectSource, RoutingTransport]:
    config = load_config(
        {"name": NAME, "source": "prefect", "poll_interval": 1, "retry": {"attempts": 2, "backoff_initial": 0.001},
         "api": {"url": "http://prefect.test/api", "event_stream": False, "send_agent_logs": False,
                 "send_events": False, **api}},
        environ={},
    ).config  # fmt: skip
    transport = RoutingTransport(handler)
    return PrefectSource(config, PrefectClient(config, transport), clock or FakeClock()), transport


def _flow_run(run_id: str, deployment: str | None = None, **job_variables: Any) -> dict[str, Any]:
    return {"id": run_id, "deployment_id": deployment, "job_variables": {"image": "busybox", **job_variables}}


class World:
    """A tiny Prefect: scheduled runs, their states, deployments; answers the calls PrefectSource makes."""

    def __init__(self, runs: list[dict[str, Any]] | None = None) -> None:
        self.runs = {r["id"]: r for r in runs or []}
        self.states: dict[str, dict[str, Any]] = {r: {"type": "SCHEDULED", "id": "s0"} for r in self.runs}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.claim_answer: Callable[[str], tuple[int, Any]] | None = None
        self.workers: dict[str, str] = {}  # the pool's workers and their status
        self.history: dict[str, list[dict[str, Any]]] = {}  # GET /flow_run_states/
        self.paused = False  # the pool: its list answers nothing
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            if path.startswith("/flow_run_states/"):
                return 200, self.history.get(path.split("flow_run_id=")[1], [])
            if path.endswith("/workers/filter"):
                return 200, [{"name": n, "status": st} for n, st in self.workers.items()]
            if path.endswith("/get_scheduled_flow_runs"):
                if self.paused:
                    return 200, []
                scheduled = [{"flow_run": r} for i, r in self.runs.items()
                             if self.states[i]["type"] == "SCHEDULED" and r.get("work_queue_id") != "paused-queue"
                             and (r.get("empirical_policy") or {}).get("retry_type") != "in_process"]  # fmt: skip
                return 200, scheduled[: (body or {}).get("limit", len(scheduled))]
            if method == "POST" and path.endswith("/set_state"):
                run_id = path.split("/")[2]
                proposed, now = body["state"], self.states[run_id]
                if proposed["type"] == "PENDING" and proposed["name"] == "Pending" and self.claim_answer is not None:
                    return self.claim_answer(run_id)
                # As Prefect's PreventPendingTransitions: PENDING is refused over RUNNING, CANCELLING and
                # CANCELLED, and over PENDING unless under a new name other than Pending; it is accepted
                # over SCHEDULED and over a final state (COMPLETED, FAILED, CRASHED).
                step = now["type"] == "PENDING" and proposed["name"] not in ("Pending", now.get("name"))
                refused = now["type"] in ("RUNNING", "CANCELLING", "CANCELLED") or (
                    now["type"] == "PENDING" and not step
                )
                if proposed["type"] == "PENDING" and refused:
                    return 200, {"status": "ABORT", "details": {"reason": "not scheduled"}}
                self.states[run_id] = {**body["state"], "id": uuid.uuid4().hex}
                return 200, {"status": "ACCEPT", "state": self.states[run_id]}
            if method == "GET" and path.startswith("/flow_runs/"):
                run_id = path.split("/")[2]
                return 200, {**self.runs[run_id], "state": self.states[run_id]}
            if method == "GET" and path.startswith("/deployments/"):
                found = self.deployments.get(path.split("/")[2])
                return (200, found) if found else (404, {"detail": "Not Found"})
            if method == "POST" and path == "/flow_runs/filter":
                wanted = body.get("flow_runs", {}).get("state", {}).get("type", {}).get("any_", [])
                ids = body.get("flow_runs", {}).get("id", {}).get("any_")
                return 200, [{**r, "state": self.states[i]} for i, r in self.runs.items()
                             if self.states[i]["type"] in wanted and (ids is None or i in ids)]  # fmt: skip
            if method == "PATCH" or path == "/logs/":
                return 204, None
        return 404, {"detail": "Not Found"}


def test_a_listed_run_is_claimed_with_pending() -> None:
    world = World([_flow_run("r1")])
    source, _ = _source(world)
    [claim] = source.poll(4)
    assert claim.run.id == "r1" and world.states["r1"]["type"] == "PENDING" and world.states["r1"]["message"] == NOTE


def test_one_list_serves_several_polls() -> None:
    """The backlog: listing once, then claiming one run per poll, costs one list request."""
    world = World([_flow_run(f"r{i}") for i in range(3)])
    source, transport = _source(world)
    taken = [c.run.id for _ in range(3) for c in source.poll(1)]
    assert sorted(taken) == ["r0", "r1", "r2"]
    assert sum(1 for _, p, _ in transport.seen if p.endswith("get_scheduled_flow_runs")) == 1


def test_an_agent_alone_tries_the_oldest_run_first() -> None:
    """As Prefect's worker does: with nobody to share with, the page's order is the queue's."""
    ids = [str(uuid.UUID(int=i)) for i in range(10)]
    page = ScheduledRuns(PrefectClient(_config(), RoutingTransport(World([_flow_run(i) for i in ids]))),
                         "agent-3", "pool", [], 0.0, 1.0, lambda: False, lambda: None, clock=FakeClock())  # fmt: skip
    page.begin()
    assert [page.next(4)["id"] for _ in ids] == ids  # type: ignore[index]


def _just_listed(runs: ScheduledRuns) -> None:
    """As after a list in this agent's readiness slot: nothing is due."""
    runs.listed_at, runs._due = runs.clock.monotonic(), False
    runs._ready_slot = int(runs.clock.time() // listing.READY_SLOT)


def _clock(runs: ScheduledRuns) -> FakeClock:
    assert isinstance(runs.clock, FakeClock)
    return runs.clock


@pytest.fixture(autouse=True)
def _long_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "READY_SLOT", 3600.0)  # no slot ends within a test


def _scheduled(world: World, agent: str = "a") -> tuple[ScheduledRuns, threading.Event]:
    woke = threading.Event()
    client = PrefectClient(_config(), RoutingTransport(world))
    return ScheduledRuns(client, agent, "pool", [], 0.0, 1.0, lambda: True, woke.set, clock=FakeClock()), woke


def test_an_announced_run_is_listed_at_once_by_an_agent_alone() -> None:
    runs, woke = _scheduled(World())
    _just_listed(runs)
    runs.announced("r1")
    assert woke.is_set() and runs._should_list()


PEERS = ["p1", "p2", "p3"]


def _late_run(agent: str = "a", at_least: int = 2) -> str:
    """A run id that at least `at_least` of PEERS rank before `agent`."""
    fleet = sorted([agent, *PEERS])
    return next(r for r in (f"r{i}" for i in range(1000)) if listing.position(agent, r, fleet) >= at_least)


def _with_peers(runs: ScheduledRuns) -> None:
    for peer in PEERS:
        runs.heard_taken(f"x-{peer}", by_peer=True, peer_name=peer)


def test_with_other_claimers_seen_an_announced_run_waits_for_this_agents_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_module, "TURN", 0.2)
    runs, woke = _scheduled(World())
    _just_listed(runs)
    _with_peers(runs)
    runs.announced(_late_run())  # two workers rank it first: 0.4 s at least
    assert not woke.is_set() and not runs._should_list()
    _clock(runs).advance(0.39)
    assert not woke.is_set()
    _clock(runs).advance(2)
    assert woke.is_set() and runs._should_list()  # its turn came: list


def test_the_owner_of_an_announced_run_lists_at_once_and_keeps_it_to_fetch() -> None:
    runs, woke = _scheduled(World())
    _just_listed(runs)
    _with_peers(runs)
    owned = next(r for r in (f"r{i}" for i in range(1000)) if listing.position("a", r, ["a", *PEERS]) == 0)
    runs.announced(owned)
    assert woke.is_set() and runs._should_list() and owned in runs._own_heard  # at once: no time passed


def test_a_server_slow_to_answer_stretches_this_agents_turn() -> None:
    """The turn of an announced run waits for the round trips of the claims ahead of it."""
    world = World()

    def slow(method: str, path: str, body: Any) -> tuple[int, Any]:
        time.sleep(0.4)
        return world(method, path, body)

    client = PrefectClient(_config(), RoutingTransport(slow))
    runs = ScheduledRuns(client, "a", "pool", [], 0.0, 1.0, lambda: True, lambda: None, clock=FakeClock())
    _with_peers(runs)
    run_id = _late_run("a", 1)
    at_rest = runs._turn(run_id)
    client.call("POST", "/work_pools/pool/get_scheduled_flow_runs", {})
    assert client.round_trip() >= 0.4
    assert runs._turn(run_id) >= at_rest + (fleet_module.OWNER_TRIPS * 0.4 - fleet_module.TURN)
    runs.close()


def test_a_run_taken_before_this_agents_turn_costs_it_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_module, "TURN", 0.2)
    runs, woke = _scheduled(World())
    _just_listed(runs)
    _with_peers(runs)
    run_id = _late_run()
    runs.announced(run_id)
    runs.heard_taken(run_id, by_peer=True)  # a worker ranked before this one took it
    _clock(runs).advance(0.8)
    assert not woke.is_set() and not runs._should_list()  # no list, no claim
    runs.close()


def test_the_agents_of_a_fleet_take_disjoint_runs_of_a_page() -> None:
    """Each run has one owner: the fleet's first picks of the same page never overlap."""
    fleet = [f"agent-{i}" for i in range(20)]
    page = [str(uuid.UUID(int=i)) for i in range(160)]
    firsts = [sorted(page, key=lambda r, a=a: (listing.position(a, r, fleet), listing.rank(a, r)))[:4] for a in fleet]
    taken = [r for picks in firsts for r in picks]
    owned = [r for r in taken if any(listing.position(a, r, fleet) == 0 for a in fleet)]
    assert len(set(taken)) == len(taken) == 80 and len(owned) == 80


def test_other_claimers_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet that shrank to one agent stops waiting for turns."""
    runs, woke = _scheduled(World())
    runs.heard_taken("other", by_peer=True)
    _clock(runs).advance(roster_module.PEERS_FORGOTTEN + 1)
    runs.announced("r1")
    assert woke.is_set()


def test_a_claim_in_another_agents_words_counts_as_a_peer() -> None:
    source, _ = _source(World())
    source._on_state("PENDING", "r1", NOTE)
    assert source._scheduled.roster.alone()
    source._on_state("PENDING", "r2", "Claimed by dagent agent 'other'")
    assert not source._scheduled.roster.alone()


def test_a_reconnected_event_stream_lists_at_once() -> None:
    """Runs scheduled while the stream was down were announced to nobody."""
    source, _ = _source(World())
    woke = threading.Event()
    source._wake = woke.set
    _just_listed(source._scheduled)
    source._on_stream_connected()
    assert woke.is_set() and source._scheduled._due


def test_abort_after_a_lost_answer_is_ours_when_the_state_says_so() -> None:
    """The first PENDING went through but its answer was lost; the retry gets ABORT: the run is ours."""
    world = World([_flow_run("r1")])
    answers = iter(["lost", "abort"])

    def claim(run_id: str) -> tuple[int, Any]:
        if next(answers) == "lost":
            world.states[run_id] = {"type": "PENDING", "message": NOTE, "id": "p1"}
            raise requests.ConnectionError("connection reset while reading the answer")
        return 200, {"status": "ABORT"}

    world.claim_answer = claim
    source, _ = _source(world)
    assert [c.run.id for c in source.poll(1)] == ["r1"]


def test_wait_arms_a_wake_up_at_prefects_delay() -> None:
    world = World([_flow_run("r1")])
    world.claim_answer = lambda _run_id: (200, {"status": "WAIT", "details": {"delay_seconds": 120}})
    source, _ = _source(world)
    woke = threading.Event()
    source._wake = woke.set
    assert source.poll(1) == []
    assert source._scheduled.wake_armed
    source.close()


def test_a_run_cancelled_after_its_claim_never_starts() -> None:
    world = World([_flow_run("r1")])
    source, _ = _source(world)
    [claim] = source.poll(1)
    world.states["r1"] = {"type": "CANCELLED", "id": "c1"}
    assert source.starting(claim) is False
    source.report(claim, RunResult.not_started("r1", "cancelled", "cancelled before it started"))
    assert world.states["r1"]["type"] == "CANCELLED"  # nothing proposed over it


def test_refuse_forgets_the_run() -> None:
    """A refused run leaves nothing behind."""
    world = World([_flow_run("r1", privileged=True)])
    source, _ = _source(world)
    [claim] = source.poll(1)
    source.refuse(claim, "refused by docker.allow_privileged")
    assert world.states["r1"]["type"] == "CRASHED"
    assert source._book._mine == set() and source._book._heard == {}


def test_an_edited_deployment_is_seen_without_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployment job variables are read again once the kept copy is older than DEPLOYMENT_TTL."""
    world = World([_flow_run("a", "d1"), _flow_run("b", "d1")])
    for r in world.runs.values():
        r["job_variables"] = {}
    world.deployments["d1"] = {"id": "d1", "name": "dep", "job_variables": {"image": "busybox:1"}}
    source, _ = _source(world)
    [first] = source.poll(1)
    world.deployments["d1"]["job_variables"] = {"image": "busybox:2"}
    monkeypatch.setattr(lookups_module, "DEPLOYMENT_TTL", 0.0)
    [second] = source.poll(1)
    assert (first.run.image, second.run.image) == ("busybox:1", "busybox:2")


def test_recovery_resumes_our_pending_runs_only() -> None:
    world = World([_flow_run("ours"), _flow_run("theirs")])
    world.states["ours"] = {"type": "PENDING", "message": NOTE, "id": "p"}
    world.states["theirs"] = {"type": "PENDING", "message": "Claimed by dagent agent 'other'", "id": "q"}
    source, _ = _source(world)
    assert [c.run.id for c in source.recover({}, [])] == ["ours"]


def test_a_run_is_submitting_when_its_container_starts() -> None:
    """As Prefect's worker: Pending, then Submitting (in the claim's words) just before the container."""
    world = World([_flow_run("r1")])
    source, _ = _source(world)
    [claim] = source.poll(1)
    assert source.starting(claim) is True
    assert (world.states["r1"]["type"], world.states["r1"]["name"], world.states["r1"]["message"]) == (
        "PENDING", "Submitting", NOTE,
    )  # fmt: skip


def test_a_restart_resumes_a_run_it_left_submitting() -> None:
    """Died between Submitting and the container: the claim check reads both PENDING states as ours."""
    world = World([_flow_run("r1")])
    source, _ = _source(world)
    world.states["r1"] = {"type": "PENDING", "name": "Submitting", "message": NOTE, "id": "q"}
    world.history["r1"] = [{"id": "s", "type": "SCHEDULED", "timestamp": _at(0)},
                           {"id": "p", "type": "PENDING", "name": "Pending", "message": NOTE, "timestamp": _at(1)},
                           {"id": "q", "type": "PENDING", "name": "Submitting", "message": NOTE, "timestamp": _at(2)}]  # fmt: skip
    [claim] = source.recover({}, [])
    assert claim.run.id == "r1"
    assert source.starting(claim) is True  # Submitting again is refused; the run is still ours and starts


def _resumed(world: World, source: PrefectSource) -> Claim:
    """r1, claimed by this agent before a restart (our Pending, nothing else since it was scheduled), recovered."""
    world.states["r1"] = {"type": "PENDING", "name": "Pending", "message": NOTE, "id": "p"}
    world.history["r1"] = [{"id": "s", "type": "SCHEDULED", "timestamp": _at(0)},
                           {"id": "p", "type": "PENDING", "name": "Pending", "message": NOTE, "timestamp": _at(1)}]  # fmt: skip
    [claim] = source.recover({}, [])
    return claim


def test_a_resumed_run_its_container_ended_is_not_revived_by_submitting() -> None:
    """Prefect takes PENDING over COMPLETED: a resumed run's state is read first, and a final one is left."""
    world = World([_flow_run("r1")])
    source, transport = _source(world)
    claim = _resumed(world, source)
    world.states["r1"] = {"type": "COMPLETED", "name": "Completed", "id": "c"}  # its engine, while we prepared
    assert source.starting(claim) is True  # the container decides (adopted, or its end read)
    assert world.states["r1"]["type"] == "COMPLETED"
    assert not [b for _, p, b in transport.seen if p.endswith("/set_state") and b["state"]["name"] == "Submitting"]


def test_a_resumed_run_another_worker_claimed_is_left_to_it() -> None:
    world = World([_flow_run("r1")])
    source, _ = _source(world)
    claim = _resumed(world, source)
    world.states["r1"] = {"type": "PENDING", "name": "Submitting", "message": None, "id": "w"}  # Prefect's worker
    assert source.starting(claim) is False
    source.report(claim, RunResult.not_started("r1", "cancelled", "cancelled before it started"))
    assert world.states["r1"]["id"] == "w"  # nothing of ours said over theirs


def _at(second: int) -> str:
    return f"2026-01-01T00:00:{second:02d}+00:00"


@pytest.mark.parametrize("taken", [True, False])
def test_recovery_steps_back_from_a_stale_claim_it_died_before_checking(taken: bool) -> None:
    """Our PENDING over a run another agent had run (its container, its end): put the end back, crash nothing."""
    world = World([_flow_run("r1")])
    source, _ = _source(world)
    world.runs["r1"]["infrastructure_pid"] = f"{source.hostname}:abc123"
    world.states["r1"] = {"type": "PENDING", "message": NOTE, "id": "p2"}
    ran = [{"id": "p1", "type": "PENDING", "timestamp": _at(1)}, {"id": "r", "type": "RUNNING", "timestamp": _at(2)},
           {"id": "c", "type": "COMPLETED", "name": "Completed", "timestamp": _at(3)}]  # fmt: skip
    world.history["r1"] = [{"id": "s", "type": "SCHEDULED", "timestamp": _at(0)}, *(ran if taken else []),
                           {"id": "p2", "type": "PENDING", "timestamp": _at(4)}]  # fmt: skip
    assert source.recover({}, []) == []
    # Taken: the engine's end is back. Ours all along: its container is gone, so CRASHED, as before.
    assert world.states["r1"]["type"] == ("COMPLETED" if taken else "CRASHED")


def test_recovery_does_not_run_an_ended_run_its_stale_claim_revived() -> None:
    """No container and no infrastructure_pid (it was cancelled before it started), then our stale PENDING."""
    world = World([_flow_run("r1")])
    source, _ = _source(world)
    world.states["r1"] = {"type": "PENDING", "message": NOTE, "id": "p2"}
    world.history["r1"] = [{"id": "s", "type": "SCHEDULED", "timestamp": _at(0)},
                           {"id": "x", "type": "CANCELLED", "name": "Cancelled", "timestamp": _at(1)},
                           {"id": "p2", "type": "PENDING", "timestamp": _at(2)}]  # fmt: skip
    assert source.recover({}, []) == []
    assert world.states["r1"]["type"] == "CANCELLED"


@pytest.mark.parametrize("seed", range(5))
def test_many_threads_at_once_leave_consistent_state(seed: int) -> None:
    """The loop, run threads, the event stream and timers all at once: no error, no run twice, no leftovers."""
    ids = [f"r{seed}-{i}" for i in range(40)]
    source, _ = _source(World([_flow_run(i) for i in ids]))
    rng = random.Random(seed)
    claims: list[Claim] = []
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # collected and asserted below
                errors.append(e)

        return threading.Thread(target=run)

    def events() -> None:
        for _ in range(400):
            source._on_state(rng.choice(["SCHEDULED", "RUNNING", "CANCELLING", "COMPLETED"]), rng.choice(ids))

    def loop() -> None:
        for _ in range(20):
            claims.extend(source.poll(4))
            source.cancellations(ids[:5])

    def life(claim: Claim) -> None:
        if source.starting(claim):
            source.started(claim, "c" + claim.run.id)
        source.log(claim, "INFO", "hello")
        source.report(claim, RunResult.ended(claim.run.id, "failed", 1, "c", "t0"))

    _run_all([guarded(events) for _ in range(3)] + [guarded(loop)])
    _run_all([guarded(lambda claim=claim: life(claim)) for claim in claims])
    source.close()
    assert errors == [], errors[:3]
    assert len({c.run.id for c in claims}) == len(claims) == len(ids)
    assert source._book._mine == set() and source._book._abandoned == set()


def _run_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_the_client_gives_each_thread_its_own_session() -> None:
    config = load_config({"source": "prefect", "api": {"url": "http://prefect.test/api"}}, environ={}).config
    client = PrefectClient(config)
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(id(client.session))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4 and id(client.session) not in seen
    client.close()


def test_the_fleet_shares_the_lists_that_keep_prefects_queues_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect marks queues NOT_READY after 60 s without a list: each 50 s slot is one agent's, in name order."""
    monkeypatch.setattr(listing, "READY_SLOT", 50.0)
    runs, _ = _scheduled(World(), agent="b")
    assert runs.fleet() == ["b"]
    runs.heard_taken("r1", by_peer=True, peer_name="a")
    runs.heard_taken("r2", by_peer=True, peer_name="c")
    assert runs.fleet() == ["a", "b", "c"]
    slots = [s for s in range(30) if fleet_module.slot_owner(s, runs.fleet()) == "b"]
    assert slots == list(range(1, 30, 3))  # every third slot: one list in 150 s, where alone it is one in 50 s
    _clock(runs).set_wall(3000.0 * 50 + 10)  # slot 3000, owned by "a" (3000 % 3 == 0)
    _just_listed(runs)  # not b's slot, nothing due
    _clock(runs).advance(41)  # slot 3001: b's
    assert runs._should_list()


def test_a_list_in_streaming_mode_arms_a_wake_up_for_the_agents_next_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "READY_SLOT", 50.0)
    clock = FakeClock()
    runs = ScheduledRuns(PrefectClient(_config(), RoutingTransport(World())), "b", "pool", [], 0.0, 1.0,
                         lambda: True, lambda: None, clock=clock)  # fmt: skip
    runs.heard_taken("r1", by_peer=True, peer_name="a")
    runs.begin()
    assert runs.next(4) is None
    slot = int(clock.time() // 50.0)
    assert runs.wake_armed
    ahead = next(k for k in (1, 2) if ["a", "b"][(slot + k) % 2] == "b")
    assert abs(runs.timer.armed_at - clock.monotonic() - ((slot + ahead) * 50.0 + 0.2 - clock.time())) < 1e-6
    runs.close()


def test_claim_notes_name_their_agent() -> None:
    from dagent.sources.prefect.claims import claim_note, claimer

    assert claimer(claim_note("host-1.a_b")) == "host-1.a_b"
    assert claimer("") is None and claimer("Claimed by dagent agent ''") is None and claimer("Pending") is None


def test_the_pools_online_workers_share_the_slots_a_quiet_fleet_never_forgets() -> None:
    """Claims are rare in a quiet pool: the roster of ONLINE workers is read every ROSTER_EVERY while streaming."""
    world = World()
    world.workers = {"a": "ONLINE", "c": "ONLINE", "gone": "OFFLINE", "prefect-worker": "ONLINE"}
    clock = FakeClock()
    runs = ScheduledRuns(PrefectClient(_config(), RoutingTransport(world)), "b", "pool", [], 0.0, 1.0,
                         lambda: True, lambda: None, clock=clock)  # fmt: skip
    runs.begin()
    assert runs.fleet() == ["a", "b", "c", "prefect-worker"]
    world.workers = {}
    runs.begin()  # not read again before ROSTER_EVERY
    assert runs.fleet() == ["a", "b", "c", "prefect-worker"]
    clock.advance(roster_module.ROSTER_FIRST[0])  # the second read comes a minute after the first
    runs.begin()
    assert runs.fleet() == ["b"]
    world.workers = {"a": "ONLINE"}
    clock.advance(roster_module.ROSTER_FIRST[1])
    runs.begin()
    assert runs.fleet() == ["a", "b"]
    world.workers = {}
    clock.advance(roster_module.ROSTER_FIRST[1])
    runs.begin()  # from the fourth on, ROSTER_EVERY apart
    assert runs.fleet() == ["a", "b"]


@pytest.mark.parametrize(("workers", "free", "page"), [(1, 1, 10), (2, 4, 16), (5, 4, 32), (40, 1, 10)])
def test_a_fleet_lists_a_page_wide_enough_to_spread_over(workers: int, free: int, page: int) -> None:
    """Agents each asking for the ten oldest runs would all rank the same ten: the page grows with the fleet,
    OWNED_PER_PAGE runs per free slot per worker, up to FLEET_PAGE workers (a page is used for FLEET_FRESH
    only, and costs the server by its runs)."""
    world = World()
    world.workers = {f"w{i}": "ONLINE" for i in range(workers)}
    transport = RoutingTransport(world)
    runs = ScheduledRuns(
        PrefectClient(_config(), transport), "w0", "pool", [], 0.0, 1.0, lambda: True, lambda: None, clock=FakeClock()
    )
    runs.begin()
    runs.next(free)
    [body] = [b for _, p, b in transport.seen if p.endswith("/get_scheduled_flow_runs")]
    assert body["limit"] == page
    runs.close()


def test_within_a_page_an_agent_tries_its_own_runs_first_oldest_first() -> None:
    """Past everyone's turn (a deep queue), agents that each take their own runs rarely meet."""
    fleet = sorted(["a", *PEERS])
    ids = [f"r{i}" for i in range(40)]
    world = World([_made(r, 60 - i) for i, r in enumerate(ids)])  # r0 the oldest
    runs, _ = _scheduled(world)
    _with_peers(runs)
    runs.begin()
    got = []
    while (flow_run := runs.next(40)) is not None:
        got.append(flow_run["id"])
    places = [listing.position("a", r, fleet) for r in got]
    assert sorted(got) == sorted(ids) and places == sorted(places) and places[0] == 0
    for place in set(places):
        same = [r for r in got if listing.position("a", r, fleet) == place]
        assert same == [r for r in ids if r in same]  # oldest first within a place


def test_a_stale_list_still_serves_this_agents_own_runs_until_owned_fresh() -> None:
    """Nobody else goes for an agent's own runs first: they outlive FLEET_FRESH (no list per freed slot);
    the others' are asked again."""
    fleet = sorted(["a", *PEERS])
    ids = [f"r{i}" for i in range(40)]
    own = [r for r in ids if listing.position("a", r, fleet) == 0]
    world = World([_made(r, 60) for r in ids])
    lists: list[str] = []

    def counting(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.endswith("/get_scheduled_flow_runs"):
            lists.append(path)
        return world(method, path, body)

    clock = FakeClock()
    runs = ScheduledRuns(PrefectClient(_config(), RoutingTransport(counting)), "a", "pool", [], 0.0, 1.0,
                         lambda: True, lambda: None, clock=clock)  # fmt: skip
    _with_peers(runs)
    runs.begin()
    assert runs.next(1)["id"] == own[0] and len(lists) == 1  # type: ignore[index]
    clock.advance(listing.FLEET_FRESH + 0.1)
    runs.begin()
    assert runs.next(1)["id"] == own[1] and len(lists) == 1  # type: ignore[index]  # no list
    clock.advance(listing.OWNED_FRESH)
    runs.begin()
    world.states = {r: {"type": "PENDING", "id": "p"} for r in ids}  # all taken since, unheard
    assert runs.next(1) is None and len(lists) == 2  # too old even for its own: asked again
    runs.close()


# --- a fleet's turns and fresh lists ---------------------------------------------------------------


def _made(run_id: str, ago: float) -> dict[str, Any]:
    """A run made `ago` seconds ago, due at once."""
    stamp = (datetime.now(timezone.utc) - timedelta(seconds=ago)).isoformat()
    return {**_flow_run(run_id), "created": stamp, "expected_start_time": stamp}


def _owned(agent: str, fleet: list[str], owner: bool) -> str:
    return next(r for r in (f"r{i}" for i in range(1000)) if (listing.position(agent, r, fleet) == 0) is owner)


def test_a_listed_run_made_just_now_waits_for_this_agents_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a fleet, a list gives an agent the runs it owns at once and the others' only at its turn."""
    monkeypatch.setattr(fleet_module, "TURN", 0.3)
    fleet = sorted(["a", *PEERS])
    mine, theirs = _owned("a", fleet, True), _late_run("a", 1)
    world = World([_made(mine, 0), _made(theirs, 0)])
    runs, woke = _scheduled(world)
    _with_peers(runs)
    runs.begin()
    assert runs.next(4)["id"] == mine  # type: ignore[index]
    world.states[mine] = {"type": "PENDING", "id": "p"}
    assert runs.next(4) is None and runs.wake_armed  # not its turn yet: a wake-up at it
    _clock(runs).advance(3)
    assert woke.is_set()
    runs.begin()
    assert runs.next(4)["id"] == theirs  # type: ignore[index]
    runs.close()


def test_a_run_waiting_longer_than_the_turns_is_anyones() -> None:
    fleet = sorted(["a", *PEERS])
    theirs = next(r for r in (f"r{i}" for i in range(1000)) if listing.position("a", r, fleet) == len(PEERS))
    runs, _ = _scheduled(World([_made(theirs, 60)]))
    _with_peers(runs)
    runs.begin()
    assert runs.next(4)["id"] == theirs  # type: ignore[index]


def test_in_a_fleet_a_list_older_than_fleet_fresh_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a burst the event stream trails claims: an old list would mostly offer runs already taken."""
    world = World([_made(f"r{i}", 60) for i in range(6)])
    runs, _ = _scheduled(world)
    _with_peers(runs)
    runs.begin()
    first = runs.next(1)
    assert first is not None
    world.states[first["id"]] = {"type": "PENDING", "id": "p"}
    taken_unheard = [r for r in runs._backlog]
    for r in taken_unheard:  # others took every run left, and the stream has not said so yet
        world.states[r["id"]] = {"type": "PENDING", "id": "p"}
    _clock(runs).advance(listing.FLEET_FRESH + 0.1)
    runs.begin()
    assert runs.next(1) is None  # listed again: nothing left to claim
    monkeypatch.setattr(listing, "FLEET_FRESH", 3600.0)  # a fresh list serves
    world.states = {r: {"type": "SCHEDULED", "id": "s"} for r in world.states}
    runs.mark_due()
    runs.begin()
    assert runs.next(1) is not None
    world.states = {r: {"type": "PENDING", "id": "p"} for r in world.states}
    runs.begin()
    assert runs.next(1) is not None  # from the backlog, not asked again


def test_a_claim_check_that_steps_back_restores_the_engines_end() -> None:
    """A CRASHED set by the agent that ran the run, reacting to our stale PENDING, is not the run's end."""
    history = [
        {"id": "s", "type": "SCHEDULED", "timestamp": "2026-01-01T00:00:00+00:00"},
        {"id": "p1", "type": "PENDING", "timestamp": "2026-01-01T00:00:01+00:00"},
        {"id": "r", "type": "RUNNING", "timestamp": "2026-01-01T00:00:02+00:00"},
        {"id": "c", "type": "COMPLETED", "name": "Completed", "timestamp": "2026-01-01T00:00:03+00:00"},
        {"id": "p2", "type": "PENDING", "timestamp": "2026-01-01T00:00:04+00:00"},
        {"id": "x", "type": "CRASHED", "name": "Crashed", "timestamp": "2026-01-01T00:00:05+00:00"},
    ]
    proposed: list[Any] = []

    def handler(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.startswith("/flow_run_states/"):
            return 200, history
        if path.endswith("/set_state"):
            proposed.append(body)
            return 200, {"status": "ACCEPT", "state": {"id": "p2" if len(proposed) == 1 else "z"}}
        return 404, {"detail": "Not Found"}

    source, _ = _source(handler)
    assert source._runs.claim("r1", lambda: 5.0).ours is False  # listed 5 s before: the history is read
    assert proposed[-1]["state"]["type"] == "COMPLETED" and proposed[-1]["force"] is True


def test_a_run_that_ended_and_was_claimed_again_by_another_agent_gets_its_end_back() -> None:
    """Its container exited 0 but another agent's stale claim made it PENDING: not CRASHED, its end put back
    (that agent's own check may never come: it may die first)."""
    world = World([_flow_run("r1")])
    source, _ = _source(world)
    [claim] = source.poll(1)
    world.states["r1"] = {"type": "PENDING", "message": "Claimed by dagent agent 'other'", "id": "p2"}
    world.history["r1"] = [{"id": "s", "type": "SCHEDULED", "timestamp": _at(0)},
                           {"id": "p1", "type": "PENDING", "timestamp": _at(1)},
                           {"id": "c", "type": "COMPLETED", "name": "Completed", "timestamp": _at(3)},
                           {"id": "p2", "type": "PENDING", "timestamp": _at(4)}]  # fmt: skip
    source.report(claim, RunResult.ended("r1", "succeeded", 0, "c", "t0"))
    assert world.states["r1"]["type"] == "COMPLETED"
    # A retry (SCHEDULED again) that another agent claimed is theirs: left alone.
    world.states["r1"] = {"type": "PENDING", "message": "Claimed by dagent agent 'other'", "id": "p3"}
    world.history["r1"] += [{"id": "s2", "type": "SCHEDULED", "timestamp": _at(5)},
                            {"id": "p3", "type": "PENDING", "timestamp": _at(6)}]  # fmt: skip
    source._book.track("r1", mine=True)
    source.report(claim, RunResult.ended("r1", "succeeded", 0, "c", "t0"))
    assert world.states["r1"]["id"] == "p3"
    world.states["r1"] = {"type": "PENDING", "message": NOTE, "id": "p3"}
    source._book.track("r1", mine=True)
    source.report(claim, RunResult.ended("r1", "succeeded", 0, "c", "t0"))
    assert world.states["r1"]["type"] == "CRASHED"  # ours and never ended: as before


def test_a_listed_run_taken_before_this_agents_turn_costs_no_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_module, "TURN", 0.2)
    theirs = _late_run("a", 2)
    runs, woke = _scheduled(World([_made(theirs, 0)]))
    _with_peers(runs)
    runs.begin()
    assert runs.next(4) is None and runs.wake_armed
    runs.heard_taken(theirs, by_peer=True)  # a worker ranked before this one took it
    _clock(runs).advance(1.0)
    assert not woke.is_set()
    runs.close()


def test_a_slow_server_cannot_keep_one_poll_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists that take longer than FLEET_FRESH: a poll lists at most twice, then hands out only its own runs."""
    monkeypatch.setattr(listing, "FLEET_FRESH", 0.05)
    theirs = [r for r in (f"r{i}" for i in range(100)) if listing.position("a", r, sorted(["a", *PEERS])) > 0]
    world = World([_made(r, 60) for r in theirs[:3]])
    lists = []
    clock = FakeClock()

    def slow(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.endswith("/get_scheduled_flow_runs"):
            lists.append(path)
            clock.advance(0.1)
        return world(method, path, body)

    client = PrefectClient(_config(), RoutingTransport(slow))
    runs = ScheduledRuns(client, "a", "pool", [], 0.0, 1.0, lambda: True, lambda: None, clock=clock)
    _with_peers(runs)
    runs.begin()
    assert runs.next(1) is not None and len(lists) == 1  # answered 0.1 s after asking: fresh from the answer
    clock.advance(0.1)
    assert runs.next(1) is not None and len(lists) == 2  # stale: listed once more
    clock.advance(0.1)
    assert runs.next(1) is None and len(lists) == 2  # not a third time in one poll, nor others' runs from a stale list
    assert runs.wake_armed and runs.timer.armed_at - clock.monotonic() < 5  # the runs it left: the next poll, soon
    runs.close()


def test_a_host_whose_clock_lags_waits_no_longer_than_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs made 'in the future' by this host's clock: its own at once, the others' at its turn from first sight."""
    monkeypatch.setattr(fleet_module, "TURN", 0.2)
    fleet = sorted(["a", *PEERS])
    mine, theirs = _owned("a", fleet, True), _late_run("a", 1)
    ahead = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    world = World([{**_made(r, 1), "created": ahead} for r in (mine, theirs)])  # made an hour ahead of this host
    runs, woke = _scheduled(world)
    _with_peers(runs)
    runs.begin()
    assert runs.next(4)["id"] == mine  # type: ignore[index]
    world.states[mine] = {"type": "PENDING", "id": "p"}
    assert runs.next(4) is None and not woke.is_set()
    _clock(runs).advance(3)
    assert woke.is_set()
    runs.begin()
    assert runs.next(4)["id"] == theirs  # type: ignore[index]
    runs.close()


class _FixedPace(Pace):
    def __init__(self, lag: float = 0.0, reaction: float = 0.0) -> None:
        super().__init__()
        self.fixed = {"lag": lag, "reaction": reaction}

    def lag(self) -> float:
        return self.fixed["lag"]

    def reaction(self) -> float:
        return self.fixed["reaction"]


def test_a_trailing_event_stream_holds_the_others_turns_back_until_the_owner_can_have_heard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An owner hears of a run on the stream: while the stream trails, a turn counted from the run's making
    would come before its owner has heard of it (a burst at N = 40: 20 s behind, 0.35 refused claims per run)."""
    monkeypatch.setattr(fleet_module, "TURN", 0.2)
    fleet = sorted(["a", *PEERS])
    theirs = next(r for r in (f"r{i}" for i in range(1000)) if listing.position("a", r, fleet) == 1)
    world = World([_made(theirs, 1)])  # made a second ago: at rest, its turn has come
    woke, pace = threading.Event(), _FixedPace(lag=1.5)  # the owner heard of it half a second ago
    runs = ScheduledRuns(PrefectClient(_config(), RoutingTransport(world)), "a", "pool", [], 0.0, 1.0,
                         lambda: True, woke.set, pace, FakeClock())  # fmt: skip
    _with_peers(runs)
    runs.begin()
    assert runs.next(4) is None and runs.wake_armed
    _clock(runs).advance(3)
    assert woke.is_set()
    runs.begin()
    assert runs.next(4)["id"] == theirs  # type: ignore[index]
    runs.close()


def test_an_owner_slow_to_get_to_its_claims_stretches_the_others_turns() -> None:
    runs = ScheduledRuns(PrefectClient(_config(), RoutingTransport(World())), "a", "pool", [], 0.0, 1.0,
                         lambda: True, lambda: None, _FixedPace(reaction=9.0), clock=FakeClock())  # fmt: skip
    _with_peers(runs)
    assert runs._turn(_late_run("a", 1)) >= 9.0


def test_an_agent_takes_anothers_run_only_once_it_waited_as_long_as_its_own_runs_wait() -> None:
    """A fair queue, and a burst's start before any claim has timed the fleet's pace: its own runs waiting
    stretch its turns at others'."""
    fleet = sorted(["a", *PEERS])
    runs, _ = _scheduled(World())
    _with_peers(runs)
    theirs = next(r for r in (f"r{i}" for i in range(1000)) if listing.position("a", r, fleet) == 1)
    assert runs._turn(theirs) < 1.0
    runs.announced(_owned("a", fleet, True))
    _clock(runs).advance(1.0)
    assert runs._turn(theirs) >= 1.0
    runs.close()


def test_a_run_marked_late_keeps_its_place_and_its_turn() -> None:
    """Prefect marks a run Late (a SCHEDULED state) 15 s past its time: under a burst, most runs before
    they are claimed. Taken as new, it went behind the owner's newer runs, and others' turns restarted."""
    fleet = sorted(["a", *PEERS])
    runs, _ = _scheduled(World())
    _with_peers(runs)
    mine = [r for r in (f"r{i}" for i in range(1000)) if listing.position("a", r, fleet) == 0][:2]
    theirs = _late_run("a", 1)
    runs.announced(mine[0])
    runs.announced(theirs)
    turn_at = runs.timer.armed_at  # the one wake-up: this agent's turn at theirs
    _clock(runs).advance(0.2)
    runs.announced(mine[1])
    runs.announced(mine[0])  # Late
    runs.announced(theirs)  # Late
    assert sorted(runs._own_heard, key=runs._own_heard.__getitem__) == mine
    assert runs.timer.armed_at == turn_at
    runs.close()


def test_its_own_runs_no_longer_wait_once_a_list_shows_nothing_of_its_queues_due() -> None:
    """A run of a queue it does not serve, or of a paused one, would stretch its turns for ever."""
    fleet = sorted(["a", *PEERS])
    runs, _ = _scheduled(World())  # the list shows nothing
    _with_peers(runs)
    theirs = next(r for r in (f"r{i}" for i in range(1000)) if listing.position("a", r, fleet) == 1)
    runs.announced(_owned("a", fleet, True))
    _clock(runs).advance(1.0)
    assert runs._turn(theirs) >= 1.0
    runs.begin()
    assert runs.next(4) is None
    assert runs._turn(theirs) < 1.0
    runs.close()


def test_a_claim_heard_on_the_stream_measures_how_far_it_trails() -> None:
    world, clock = World([_flow_run("r1")]), FakeClock()
    source, _ = _source(world, clock)
    assert [c.run.id for c in source.poll(4)] == ["r1"]
    clock.advance(0.2)
    source._on_state("PENDING", "r1", NOTE)  # our own claim, heard
    assert 0.1 < source._pace.lag() <= 0.2  # less the claim's own round trip
    source._on_state("PENDING", "r2", "Claimed by dagent agent 'other'")  # another's: no sample
    assert len(source._pace._lags) == 1


def test_every_claim_heard_on_the_stream_times_the_fleets_pace() -> None:
    clock = FakeClock()
    source, _ = _source(World(), clock)
    for run_id in ("r1", "r2", "r3"):
        source._on_state("SCHEDULED", run_id)
    clock.advance(0.2)
    source._on_state("PENDING", "r1", "Claimed by dagent agent 'other'")
    source._on_state("PENDING", "r2", NOTE)
    source._on_state("CANCELLED", "r3")
    samples = source._pace._claims
    assert [seconds for _, seconds, _ in samples] == pytest.approx([0.2, 0.2])


def test_a_claim_by_an_agent_whose_turn_came_is_told_from_its_owners() -> None:
    """Another agent's claim of a run it does not own came at its turn: the pace counts it apart (see pace)."""
    source, _ = _source(World())
    ids = [f"r{i}" for i in range(40)]
    theirs = next(r for r in ids if fleet_module.position("other", r, ["other", NAME]) == 0)
    taken = next(r for r in ids if fleet_module.position("other", r, ["other", NAME]) == 1)
    mine_at_turn = next(
        r for r in ids if r not in (theirs, taken) and fleet_module.position(NAME, r, ["other", NAME]) == 1
    )
    for run_id in (theirs, taken, "r-worker", mine_at_turn):
        source._on_state("SCHEDULED", run_id)
    source._on_state("PENDING", theirs, "Claimed by dagent agent 'other'")
    source._on_state("PENDING", taken, "Claimed by dagent agent 'other'")
    source._on_state("PENDING", "r-worker", "Claimed by a worker that leaves no name")  # Prefect's own: as an owner
    source._on_state("PENDING", mine_at_turn, NOTE)  # this agent's own claim of another's run
    assert [at_turn for _, _, at_turn in source._pace._claims] == [False, True, False, True]


def test_a_run_a_list_shows_due_later_does_not_time_the_fleets_pace() -> None:
    later = {**_flow_run("r1"), "expected_start_time": (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()}
    source, _ = _source(World([later]))
    source._on_state("SCHEDULED", "r1")
    assert source.poll(4) == []
    source._on_state("PENDING", "r1", "Claimed by dagent agent 'other'")
    assert source._pace.reaction() == 0.0


# --- a fleet's own runs, fetched by id -----------------------------------------------------------------


def _counting(world: World) -> tuple[ScheduledRuns, list[tuple[str, Any]], threading.Event]:
    calls: list[tuple[str, Any]] = []

    def handler(method: str, path: str, body: Any) -> tuple[int, Any]:
        calls.append((path, body))
        return world(method, path, body)

    woke = threading.Event()
    runs = ScheduledRuns(PrefectClient(_config(), RoutingTransport(handler)), "a", "pool", [], 0.0, 1.0,
                         lambda: True, woke.set, clock=FakeClock())  # fmt: skip
    _with_peers(runs)
    _just_listed(runs)
    return runs, calls, woke


def _pool_lists(calls: list[tuple[str, Any]]) -> int:
    return sum(1 for path, _ in calls if path.endswith("/get_scheduled_flow_runs"))


def _deep(n_theirs: int, n_mine: int, **extra: Any) -> tuple[World, list[str], list[str]]:
    """A pool whose oldest `n_theirs` runs are other workers' and whose next `n_mine` are agent a's."""
    fleet = sorted(["a", *PEERS])
    ids = [f"r{i}" for i in range(3000)]
    theirs = [r for r in ids if listing.position("a", r, fleet) > 0][:n_theirs]
    mine = [r for r in ids if listing.position("a", r, fleet) == 0][:n_mine]
    runs = [_made(r, 600 - i) for i, r in enumerate(theirs)] + [
        {**_made(r, 100 - i), **extra} for i, r in enumerate(mine)
    ]
    return World(runs), theirs, mine


def test_an_owner_fetches_its_announced_runs_behind_the_page_and_tries_them_first() -> None:
    """Under a burst every agent's page is the pool's oldest runs, mostly others': its own, fetched, it meets nobody at."""
    world, theirs, mine = _deep(12, 2)
    runs, calls, _ = _counting(world)
    for run_id in mine:
        runs.announced(run_id)
    runs.begin()
    assert runs.next(1)["id"] == mine[0]  # type: ignore[index]
    [body] = [b for p, b in calls if p == "/flow_runs/filter"]
    assert body["flow_runs"]["id"]["any_"] == mine and body["flow_runs"]["state"]["type"]["any_"] == ["SCHEDULED"]
    assert body["work_pools"]["name"]["any_"] == ["pool"] and _pool_lists(calls) == 1
    assert runs.next(1)["id"] == mine[1]  # type: ignore[index]
    assert runs.next(1)["id"] in theirs  # type: ignore[index]  # then the others'
    runs.close()


def test_an_owner_takes_no_more_runs_than_the_pool_listed() -> None:
    """A pool or queue at its concurrency limit lists fewer runs: the fetch does not get round it."""
    world, theirs, mine = _deep(1, 3)
    world.runs = {r: world.runs[r] for r in [*theirs, *mine]}
    limited = World([world.runs[theirs[0]]])  # the list shows one run
    runs, _, _ = _counting(world)
    runs.client = PrefectClient(
        _config(),
        RoutingTransport(lambda m, p, b: (limited if p.endswith("/get_scheduled_flow_runs") else world)(m, p, b)),
    )
    for run_id in mine:
        runs.announced(run_id)
    runs.begin()
    got = [runs.next(4), runs.next(4)]
    assert got[0]["id"] == mine[0] and got[1] is None  # type: ignore[index]
    runs.close()


def test_nothing_is_fetched_from_a_paused_pool() -> None:
    world, _, mine = _deep(2, 1)
    world.paused = True
    runs, calls, _ = _counting(world)
    runs.announced(mine[0])
    runs.begin()
    assert runs.next(1) is None and not [p for p, _ in calls if p == "/flow_runs/filter"]
    runs.close()


@pytest.mark.parametrize(
    "extra",
    [{"work_queue_id": "paused-queue"}, {"empirical_policy": {"retry_type": "in_process"}}],
    ids=["a queue the list did not show", "retried in-process"],
)
def test_an_owner_leaves_fetched_runs_prefects_list_would_not_show(extra: dict[str, Any]) -> None:
    world, theirs, mine = _deep(2, 1, **extra)
    runs, _, _ = _counting(world)
    runs.announced(mine[0])
    runs.begin()
    got = [runs.next(4), runs.next(4), runs.next(4)]
    assert sorted(r["id"] for r in got if r) == sorted(theirs) and got[2] is None
    assert mine[0] not in runs._own_heard  # left for a list to show
    runs.close()


def test_an_own_run_taken_meanwhile_is_forgotten() -> None:
    world, _, mine = _deep(12, 2)
    runs, _, _ = _counting(world)
    for run_id in mine:
        runs.announced(run_id)
    world.states[mine[0]] = {"type": "PENDING", "id": "p"}  # taken by another, not heard yet
    runs.begin()
    assert runs.next(1)["id"] == mine[1]  # type: ignore[index]
    assert mine[0] not in runs._own_heard
    runs.close()


def test_an_own_run_due_later_waits_for_its_time() -> None:
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    world, _, mine = _deep(2, 1, expected_start_time=later, next_scheduled_start_time=later)
    runs, _, _ = _counting(world)
    runs.pace.scheduled(mine[0])
    runs.announced(mine[0])
    runs.begin()
    while (flow_run := runs.next(1)) is not None:
        assert flow_run["id"] != mine[0]
    assert runs._own_heard[mine[0]] > runs.clock.monotonic() + 3000 and runs.wake_armed
    assert mine[0] not in runs.pace._scheduled  # its claim in an hour will not time the fleet's pace
    runs.close()


@pytest.mark.parametrize("alone", [True, False])
def test_alone_or_without_the_stream_nothing_is_fetched_by_id(alone: bool) -> None:
    world, _, mine = _deep(2, 1)
    calls: list[tuple[str, Any]] = []

    def handler(method: str, path: str, body: Any) -> tuple[int, Any]:
        calls.append((path, body))
        return world(method, path, body)

    runs = ScheduledRuns(PrefectClient(_config(), RoutingTransport(handler)), "a", "pool", [], 0.0, 1.0,
                         lambda: alone, lambda: None, clock=FakeClock())  # fmt: skip
    if not alone:
        _with_peers(runs)
    runs._own_heard[mine[0]] = 0.0
    runs.begin()
    assert runs.next(1) is not None and _pool_lists(calls) == 1
    assert not [p for p, _ in calls if p == "/flow_runs/filter"]
    runs.close()


# --- every failure that belongs to one run ends that run (issue 27) -------------------------------

_BAD_RUNS = {
    "bad-registry": {"registry_credentials": {"username": "u", "password": "p", "registry_url": "not a host!!"}},
    "bad-block": {"env": {"X": {"$ref": {"block_document_id": "filter"}}}},
    "bad-block-path": {"env": {"X": {"$ref": {"block_document_id": "../../admin/version"}}}},
    "bad-variable": {"env": {"X": "{{ prefect.variables.gone }}"}},
    "bad-variable-path": {"env": {"X": "{{ prefect.variables.a..b }}"}},
}


def _refusing_world(**bad: dict[str, Any]) -> tuple[World, Callable[[str, str, Any], tuple[int, Any]]]:
    world = World([_flow_run("good1"), *(_flow_run(run_id, **variables) for run_id, variables in bad.items()),
                   _flow_run("good2")])  # fmt: skip

    def call(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.startswith("/block_documents/filter"):
            return 405, {"detail": "Method Not Allowed"}
        if path.startswith("/variables/name/"):
            return 404, {"detail": "Not Found"}
        return world(method, path, body)

    return world, call


@pytest.mark.parametrize("bad", sorted(_BAD_RUNS))
def test_a_run_with_bad_job_variables_is_crashed_and_the_poll_goes_on(bad: str) -> None:
    """Attack first: a bad registry_credentials or block lookup raised out of the poll, stranding the runs beside it."""
    world, call = _refusing_world(**{bad: _BAD_RUNS[bad]})
    source, transport = _source(call)
    claims = source.poll(3)
    assert sorted(c.run.id for c in claims) == ["good1", "good2"]
    assert world.states[bad]["type"] == "CRASHED", world.states[bad]
    assert "dagent refused this run" in world.states[bad]["message"]
    assert [p for _, p, _ in transport.seen if "admin" in p or ".." in p] == []


def test_an_exception_of_any_type_while_preparing_a_run_crashes_that_run_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World([_flow_run("good1"), _flow_run("boom"), _flow_run("good2")])
    source, _ = _source(world)
    real = source.prepare.run_request

    def run_request(run_id: str, variables: Any) -> Any:
        if run_id == "boom":
            raise RecursionError("maximum recursion depth exceeded")
        return real(run_id, variables)

    monkeypatch.setattr(source.prepare, "run_request", run_request)
    assert sorted(c.run.id for c in source.poll(3)) == ["good1", "good2"]
    assert world.states["boom"]["type"] == "CRASHED" and "RecursionError" in world.states["boom"]["message"]


def test_a_restart_with_a_bad_run_of_its_own_pending_crashes_it_and_resumes_the_rest() -> None:
    world, call = _refusing_world(**{"bad-registry": _BAD_RUNS["bad-registry"]})
    for run_id in world.runs:
        world.states[run_id] = {"type": "PENDING", "message": NOTE, "id": "p"}
    source, _ = _source(call)
    assert sorted(c.run.id for c in source.recover({}, [])) == ["good1", "good2"]
    assert world.states["bad-registry"]["type"] == "CRASHED"


def test_when_the_api_fails_mid_poll_the_runs_claimed_so_far_are_kept() -> None:
    """An agent's fault (a 503 after retries) is not the run's: it stays as it is, and earlier claims start."""
    world = World([_flow_run("good1", "d1"), _flow_run("later", "d2")])
    world.deployments["d1"] = {"id": "d1", "name": "dep", "job_variables": {}}
    answer = world.__call__

    def call(method: str, path: str, body: Any) -> tuple[int, Any]:
        return (503, {"detail": "busy"}) if path.startswith("/deployments/d2") else answer(method, path, body)

    source, _ = _source(call)
    assert [c.run.id for c in source.poll(2)] == ["good1"]
    assert world.states["later"]["type"] == "SCHEDULED"
    with pytest.raises(SourceUnavailable):
        source.poll(2)  # nothing claimed before the failure: the poll fails and the agent backs off


def test_a_run_claimed_before_the_api_failed_is_made_a_claim_at_the_next_poll() -> None:
    world = World([_flow_run("r1")])
    failing = {"on": True}
    answer = world.__call__

    def call(method: str, path: str, body: Any) -> tuple[int, Any]:
        if failing["on"] and path.startswith("/flows/"):
            return 503, {"detail": "busy"}
        return answer(method, path, body)

    world.runs["r1"]["flow_id"] = "f1"
    source, _ = _source(call)
    with pytest.raises(SourceUnavailable):
        source.poll(1)
    assert world.states["r1"]["type"] == "PENDING"  # ours, not dropped
    failing["on"] = False
    assert [c.run.id for c in source.poll(1)] == ["r1"]


@pytest.mark.parametrize("run_id", ["../../admin/x?y=", "a/b", "%2e%2e", ""])
def test_run_ids_that_would_change_a_path_never_reach_one(run_id: str) -> None:
    world = World([_flow_run(run_id), _flow_run("good")])
    source, transport = _source(world)
    assert [c.run.id for c in source.poll(2)] == ["good"]
    assert all(run_id not in path for _, path, _ in transport.seen if run_id)


def test_a_cancelling_event_the_runs_state_does_not_bear_out_stops_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack first (issue 27): a CANCELLING event (anyone who may write events can send one) stopped a
    run's container with no REST check. Now the run's state is read once; a confirmed cancel is kept."""
    world = World([_flow_run("r1"), _flow_run("r2")])
    source, transport = _source(world)
    claims = source.poll(2)
    assert len(claims) == 2
    for run_id in ("r1", "r2"):
        world.states[run_id] = {"type": "RUNNING", "id": "run"}
    world.states["r2"] = {"type": "CANCELLING", "id": "c"}
    monkeypatch.setattr(source, "_streaming", lambda: True)
    source._on_state("CANCELLING", "r1", "spoofed")
    source._on_state("CANCELLING", "r2", "")
    assert source.cancellations(["r1", "r2"]) == ["r2"]
    reads = len(transport.seen)
    assert source.cancellations(["r1", "r2"]) == ["r2"]  # confirmed once: no second read
    assert len(transport.seen) == reads


def test_a_crashed_proposal_the_server_refuses_for_one_run_does_not_end_the_poll() -> None:
    _, call = _refusing_world(**{"bad-registry": _BAD_RUNS["bad-registry"]})

    def refusing(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/flow_runs/bad-registry/set_state" and body["state"]["type"] == "CRASHED":
            return 422, {"detail": "no"}
        return call(method, path, body)

    source, _ = _source(refusing)
    assert sorted(c.run.id for c in source.poll(3)) == ["good1", "good2"]


def test_a_runs_life_emits_the_events_prefects_worker_emits() -> None:
    """submitted → container created → running → exited → executed, chained by `follows`, with R(run) related."""
    world = World([_flow_run("r1", "d1")])
    world.runs["r1"].update(name="brave-fox", tags=["team-a"], flow_id="f1")
    world.deployments["d1"] = {"id": "d1", "name": "dep", "tags": ["nightly"], "job_variables": {"image": "busybox"}}

    def with_flows(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/flows/f1":
            return 200, {"id": "f1", "name": "etl", "tags": ["flow-tag"]}
        return world(method, path, body)

    source, transport = _source(with_flows, send_events=True)
    source.prepare.pool = Pool(id="p1")
    [claim] = source.poll(1)
    assert source.starting(claim)
    source.started(claim, "c" * 64)
    source.report(claim, RunResult.ended("r1", "failed", 3, "c" * 64, "t0", "t1", why="exited with code 3"))
    source.close()
    sent = [e for method, path, body in transport.seen if path == "/events" for e in body]
    names = [e["event"] for e in sent]
    assert names == ["prefect.worker.submitted-flow-run", "prefect.docker.container.created",
                     "prefect.docker.container.running", "prefect.docker.container.exited",
                     "prefect.worker.executed-flow-run"]  # fmt: skip
    by_name = {e["event"]: e for e in sent}
    worker = by_name["prefect.worker.submitted-flow-run"]["resource"]
    assert worker["prefect.resource.id"] == f"prefect.worker.docker.{NAME.lower()}"
    related = [r["prefect.resource.id"] for r in by_name["prefect.worker.submitted-flow-run"]["related"]]
    assert related == ["prefect.deployment.d1", "prefect.flow.f1", "prefect.flow-run.r1", "prefect.tag.flow-tag",
                       "prefect.tag.nightly", "prefect.tag.team-a", "prefect.work-pool.p1"]  # fmt: skip
    container = by_name["prefect.docker.container.created"]
    assert container["resource"] == {"prefect.resource.id": "prefect.docker.container." + "c" * 64,
                                     "prefect.resource.name": "brave-fox"}  # fmt: skip
    assert container["related"][-1]["prefect.resource.role"] == "worker"
    assert by_name["prefect.docker.container.running"]["follows"] == container["id"]
    assert by_name["prefect.docker.container.exited"]["follows"] == by_name["prefect.docker.container.running"]["id"]
    executed = by_name["prefect.worker.executed-flow-run"]
    assert executed["follows"] == by_name["prefect.worker.submitted-flow-run"]["id"]
    run = next(r for r in executed["related"] if r["prefect.resource.role"] == "flow-run")
    assert run["prefect.infrastructure.status-code"] == "3"
    assert run["prefect.infrastructure.identifier"].endswith(":" + "c" * 64)


def test_an_idle_source_sends_no_events_and_a_container_that_never_ran_says_creation_failed() -> None:
    world = World([_flow_run("r1")])

    def with_pool(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/admin/version":
            return 200, "3.8.8"
        if path == "/work_pools/pool":
            return 200, {"id": "p1", "type": "docker", "base_job_template": {}}
        return world(method, path, body)

    source, transport = _source(with_pool, send_events=True, work_pool="pool")
    source.connect()
    for _ in range(3):
        source.poll(0)
    source._events.sender.flush()  # type: ignore[union-attr]
    sent = [e["event"] for _, p, body in transport.seen if p == "/events" for e in body]
    assert sent == ["prefect.worker.started"]  # and nothing more while idle
    [claim] = source.poll(1)
    assert source.starting(claim)
    source.report(claim, RunResult.crashed("r1", "image missing"))
    source.close()
    names = [e["event"] for _, p, body in transport.seen if p == "/events" for e in body][1:]
    # As the worker: a container that could not be made was never executed.
    assert names == ["prefect.worker.submitted-flow-run", "prefect.docker.container.creation-failed",
                     "prefect.worker.stopped"]  # fmt: skip


def test_a_run_adopted_after_a_restart_says_its_end_only() -> None:
    """The agent that started it said submitted, created and running; the restarted one says exited and executed."""
    world = World([_flow_run("r1")])
    world.states["r1"] = {"type": "PENDING", "message": NOTE, "id": "p"}
    source, transport = _source(world, send_events=True)
    info = ContainerInfo("c" * 64, "dagent-r1", "r1", "busybox", "exited", 0, "t0", "t1", {"dagent.agent": NAME})
    [claim] = source.recover({"r1": info}, ["c" * 64])
    assert source.starting(claim)
    source.started(claim, "c" * 64)
    source.report(claim, RunResult.ended("r1", "succeeded", 0, "c" * 64, "t0", "t1"))
    source.close()
    names = [e["event"] for _, p, body in transport.seen if p == "/events" for e in body]
    assert names == ["prefect.docker.container.exited", "prefect.worker.executed-flow-run"]


def test_a_started_run_gets_the_workers_labels_and_a_failure_to_set_them_is_not_the_runs() -> None:
    world = World([_flow_run("r1")])
    refuse = {"labels": False}

    def handler(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.endswith("/labels") and refuse["labels"]:
            return 422, {"detail": "no"}
        return world(method, path, body)

    source, transport = _source(handler)
    source.prepare.pool = Pool(id="p1")
    [claim] = source.poll(1)
    source.started(claim, "c" * 64)
    [labels] = [body for method, path, body in transport.seen if path == "/flow_runs/r1/labels"]
    assert labels == {"prefect.worker.name": NAME, "prefect.worker.type": "docker",
                      "prefect.work-pool.name": "dagent", "prefect.work-pool.id": "p1"}  # fmt: skip
    refuse["labels"] = True
    source.started(claim, "c" * 64)  # logged, not raised: a label never ends a running run


def test_a_run_whose_container_never_ran_still_says_which_worker_tried() -> None:
    """Prefect's worker labels a run before it starts the container; dagent after, and on a failed start too."""
    world = World([_flow_run("r1")])
    source, transport = _source(world)
    source.prepare.pool = Pool(id="p1")
    [claim] = source.poll(1)
    assert source.starting(claim)
    source.report(claim, RunResult.crashed("r1", "start failed: OCI runtime create failed"))
    assert [p for _, p, _ in transport.seen if p == "/flow_runs/r1/labels"] == ["/flow_runs/r1/labels"]
    assert world.states["r1"]["type"] == "CRASHED"
