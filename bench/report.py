"""Every benchmark figure in the documents, rendered from the result files committed under bench/results/.

    python -m bench.report           # rewrite the generated blocks of README.md, docs/benchmarks.md, bench/README.md
    python -m bench.report --check   # exit 1 when a document differs from its result files (what CI runs)

A generated block sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`. The standard run's
block (`bench`) and the README's figures (`figures`) come from bench/results/latest.json, the chaos
tables of docs/reliability.md from bench/results/chaos-full.json and chaos-mutants-short.json (which
`python -m tests.chaos` and its `--mutants --short` write), docs/conformance.md's from
bench/results/conformance-full.json and conformance-mutants.json, each figure with the date, code commit,
machine and backend of the run that measured it; the scale tables must
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


def _suite_provenance(name: str) -> tuple[dict[str, Any], str]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path.relative_to(REPO)}: missing; the suite that writes it has not been run whole")
    found = dict(json.loads(path.read_text()))
    meta = found["meta"]
    backend = {"postgres": "PostgreSQL", "sqlite": "SQLite"}.get(str(meta.get("backend")), str(meta.get("backend")))
    took = f"{meta['seconds']} s" if meta.get("seconds") else "its duration not recorded"
    return found, (
        f"{str(meta.get('when', '?'))[:16].replace('T', ' ')} UTC, code {meta.get('commit', 'not recorded')}, "
        f"{meta.get('cpus', '?')} CPUs, Prefect {meta.get('prefect', '?')} on {backend}, {took} "
        f"(`{path.relative_to(REPO)}`)"
    )


def chaos_block() -> str:
    """The last full chaos run's table."""
    found, provenance = _suite_provenance("chaos-full")
    lines = [
        f"Last full run (`python -m tests.chaos`): {provenance}.",
        "",
        "| scenario | runs / cases | lost | run twice | stuck | orphans | target met | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in found["rows"]:
        notes = "; ".join(n for n in [*r["notes"], *r["failures"]] if n)
        met = "yes" if r["ok"] else "**no**"
        lines.append(
            f"| {r['scenario']} | {r['runs']} | {r['lost']} | {r['twice']} | {r['stuck']} | {r['orphans']} | {met} | {notes} |"
        )
    return "\n".join(lines)


def chaos_mutants_block() -> str:
    """Which mutant each chaos row went red under, from the last `--mutants --short` run."""
    found, provenance = _suite_provenance("chaos-mutants-short")
    lines = [
        f"Last run of `python -m tests.chaos --mutants --short`: {provenance}.",
        "",
        "| row | caught by |",
        "|---|---|",
    ]
    for row, mutants in found["rows"].items():
        lines.append(f"| {row} | {'; '.join(mutants) if mutants else '**not caught**'} |")
    return "\n".join(lines)


def conformance_block() -> str:
    """What the last whole conformance run printed."""
    found, provenance = _suite_provenance("conformance-full")
    return f"Last whole run (`python -m tests.conformance`): {provenance}.\n\n{found['text']}"


def conformance_mutants_block() -> str:
    """Which case caught each mutant, from the last `--mutants` run."""
    found, provenance = _suite_provenance("conformance-mutants")
    return f"Last run of `python -m tests.conformance --mutants`: {provenance}.\n\n{found['text']}"


def scale_tables() -> str:
    from bench.scale_report import tables

    return str(tables(json.loads((RESULTS / "scale.json").read_text())))


# document → block name → what it must hold (rendered whole) or contain (hand-written prose around it)
RENDERED: dict[str, dict[str, Callable[[], str]]] = {
    "README.md": {"figures": figures_block},
    "docs/benchmarks.md": {"bench": bench_block},
    "bench/README.md": {"bench": bench_block},
    "docs/reliability.md": {"chaos": chaos_block, "chaos-mutants": chaos_mutants_block},
    "docs/conformance.md": {"conformance": conformance_block, "mutants": conformance_mutants_block},
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
