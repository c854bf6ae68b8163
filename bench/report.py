"""Every benchmark figure in the documents, rendered from the result files committed under bench/results/.

    python -m bench.report           # rewrite the generated blocks of README.md, docs/benchmarks.md, bench/README.md
    python -m bench.report --check   # exit 1 when a document differs from its result files (what CI runs)

A generated block sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`. The standard run's
block (`bench`) and the README's figures (`figures`) come from bench/results/latest.json, each figure
with the date, code commit, machine and backend of the run that measured it; the scale tables must
appear, as `bench/scale.py --report` prints them from bench/results/scale.json, in the `scale` block,
whose prose around them is written by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def _latest() -> dict[str, Any]:
    return dict(json.loads((RESULTS / "latest.json").read_text()))


def _provenance(meta: dict[str, Any]) -> str:
    backend = {"postgres": "PostgreSQL", "sqlite": "SQLite"}.get(str(meta.get("backend")), "SQLite")
    when = str(meta.get("when", "?"))[:10]
    dated = RESULTS / f"run-{meta.get('mode')}-{when}.json"  # the copy that stays when latest.json moves on
    source = dated if dated.exists() and dated.read_text() == (RESULTS / "latest.json").read_text() else None
    return (
        f"{when}, code {meta.get('commit', 'not recorded')}, {meta.get('cpus', '?')} CPUs, Prefect "
        f"{meta.get('prefect', '?')} on {backend} (`{(source or RESULTS / 'latest.json').relative_to(REPO)}`)"
    )


def bench_block() -> str:
    """The standard run's table and its requests by kind."""
    from bench.run import table

    results = _latest()
    lines = [f"Last standard run: {_provenance(results['meta'])}.", "", table(results), ""]
    lines.append("Requests per run by kind (burst of 12, not idle-adjusted):")
    lines.append("")
    for system in ("dagent", "worker"):
        kinds = results[system].get("requests_by_kind") or {}
        lines.append(f"- {system}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    return "\n".join(lines)


def figures_block() -> str:
    """The README's rows of figures, each dated."""
    results = _latest()
    d, w, meta = results["dagent"], results["worker"], results["meta"]
    when = str(meta.get("when", "?"))[:10]

    def row(name: str, key: str, unit: str) -> str:
        ratio = f" ({d[key] / w[key]:.2f}×)" if d.get(key) and w.get(key) else ""
        return f"| {name} ({when}) | {d[key]}{unit}{ratio} | {w[key]}{unit} |"

    return "\n".join(
        [
            "| measured, same machine, same run | dagent | Prefect's worker |",
            "|---|---|---|",
            row("dispatch p50", "dispatch_p50_s", " s"),
            row("idle memory", "idle_rss_mb", " MB"),
            row("API requests per run", "requests_per_run", ""),
            "",
            f"Figures: `python bench/run.py`, {_provenance(meta)}; [Benchmarks](docs/benchmarks.md) has the rest.",
        ]
    )


def scale_tables() -> str:
    from bench.scale import tables

    return str(tables(json.loads((RESULTS / "scale.json").read_text())))


# document → block name → what it must hold (rendered whole) or contain (hand-written prose around it)
RENDERED: dict[str, dict[str, Callable[[], str]]] = {
    "README.md": {"figures": figures_block},
    "docs/benchmarks.md": {"bench": bench_block},
    "bench/README.md": {"bench": bench_block},
}
CONTAINED: dict[str, dict[str, Callable[[], str]]] = {"docs/benchmarks.md": {"scale": scale_tables}}


def _span(text: str, name: str, path: str) -> tuple[int, int]:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no {begin} … {end} block")
    return text.index(begin) + len(begin), text.index(end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a document is stale")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for path, blocks in RENDERED.items():
        text = (REPO / path).read_text()
        new = text
        for name, render in blocks.items():
            start, end = _span(new, name, path)
            new = new[:start] + "\n" + render() + "\n" + new[end:]
        if new != text:
            stale.append(path)
            if not args.check:
                (REPO / path).write_text(new)
    for path, blocks in CONTAINED.items():
        text = (REPO / path).read_text()
        for name, render in blocks.items():
            start, end = _span(text, name, path)
            if render() not in text[start:end]:
                stale.append(f"{path} ({name}: its tables are not those of the result files; paste them in)")
    for path in stale:
        print(f"{'stale' if args.check else 'rewritten'}: {path}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
