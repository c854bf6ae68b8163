"""fleet.steals: which of others' waiting runs a free agent goes for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dagent.sources.prefect.fleet import owner, position, steals

Heard = dict[str, tuple[str, int, float]]

heard_maps = st.dictionaries(
    st.text("abcdef0123", min_size=1, max_size=6),
    st.tuples(st.sampled_from(["o1", "o2", "o3"]), st.integers(1, 5), st.floats(0, 100, allow_nan=False)),
    max_size=30,
)


@given(heard_maps, st.floats(0, 100, allow_nan=False), st.sets(st.sampled_from(["o1", "o2", "o3"])))
def test_only_full_owners_runs_best_place_first_their_next_last(heard: Heard, ripe_by: float, full: set[str]) -> None:
    picks, ripens = steals(heard, ripe_by, full)
    assert set(picks) == {r for r, (o, _, at) in heard.items() if o in full and at <= ripe_by}
    nexts = {min((at, r) for r, (o, _, at) in heard.items() if o == who)[1] for who, _, _ in heard.values()}
    keys = [(r in nexts, heard[r][1], -heard[r][2]) for r in picks]
    assert keys == sorted(keys)
    later = [at for o, _, at in heard.values() if o in full and at > ripe_by]
    assert ripens == (min(later) if later else None)


def test_an_owners_next_comes_last_and_the_newest_first_among_equal_places() -> None:
    heard = {"x": ("o1", 1, 1.0), "y": ("o1", 1, 2.0), "z": ("o1", 1, 3.0), "w": ("o2", 1, 0.5), "v": ("o2", 2, 2.5)}
    assert steals(heard, 10.0, {"o1", "o2"}) == (["z", "y", "v", "x", "w"], None)
    assert steals(heard, 2.0, {"o1"}) == (["y", "x"], 3.0)
    assert steals(heard, 10.0, set()) == ([], None)  # owners with a slot free take their own


def test_thieves_spread_over_a_backlog() -> None:
    """Forty agents, two hundred runs waiting behind full owners: the thieves' first picks rarely coincide."""
    fleet = [f"agent-{i}" for i in range(40)]
    runs = [f"run-{i}" for i in range(200)]
    firsts = []
    for thief in fleet[:20]:
        heard = {r: (owner(r, fleet), position(thief, r, fleet), float(i)) for i, r in enumerate(runs)}
        others = {r: h for r, h in heard.items() if h[0] != thief}
        picks, _ = steals(others, 1000.0, set(fleet))
        firsts.append(picks[0])
    assert len(set(firsts)) >= 15
