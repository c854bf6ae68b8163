"""The mutants the chaos suite must catch: each breaks one property a row claims to prove.

`python -m tests.chaos --mutants [--short]` runs each mutant's rows against dagent broken that way
(tests/support/mutants.py); a mutant is caught when one of them misses its target.
"""

from __future__ import annotations

from tests.support.mutants import Mutant

MUTANTS: list[Mutant] = [
    Mutant(
        "reconcile skipped at start",
        "agent.py",
        "resumed = self.source.recover(containers, self.runtime.container_ids())",
        "resumed = []",
        ("inbox-kill", "prefect-kill"),
    ),
    Mutant(
        "inbox claim not exclusive (link instead of rename)",
        "sources/inbox.py",
        "durable.rename(path, target)  # the claim: exactly one agent's rename succeeds",
        "durable.link(path, target)",
        ("many-inbox",),
    ),
    Mutant(
        "daemon faults never retried",
        "retry.py",
        "return retrying(settings, is_transient, what)(fn)",
        "return retrying(settings, lambda e: False, what)(fn)",
        ("socket-faults", "daemon-restart"),
    ),
    Mutant(
        "health always answers 200",
        "agent.py",
        "return polling and daemon, details",
        "return True, details",
        ("daemon-restart",),
    ),
    Mutant(
        "API faults never retried",
        "sources/prefect/client.py",
        'answer: _Answer = retry.call(self.retry, _is_transient, f"{method} {path}", once)',
        'answer: _Answer = retry.call(self.retry, lambda e: False, f"{method} {path}", once)',
        ("api-faults",),
    ),
    Mutant(
        "one agent exits on its own",
        "executor.py",
        "metrics.runs_started.inc()",
        'metrics.runs_started.inc(); __import__("os")._exit(0) if self._settings.config.name.endswith("-1") else None',
        ("many-inbox",),
    ),
    Mutant(
        "registry rule inverted",
        "policy.py",
        "if ref.explicit_registry and ref.registry not in allow:",
        "if ref.explicit_registry and ref.registry in allow:",
        ("corpus",),
    ),
    Mutant(
        "bad input exits 1 instead of 2",
        "cli.py",
        "    (InputError, Exit.BAD_INPUT),",
        "    (InputError, Exit.ERROR),",
        ("corpus",),
    ),
    Mutant(
        "a secret written to a log line",
        "agent.py",
        "sorted(self.config.labels),\n        )  # fmt: skip",
        "sorted(self.config.labels),\n        )  # fmt: skip\n        "
        "log.info('token %s', self.config.api.token.get_secret_value() if self.config.api.token else '')",
        ("secrets",),
    ),
    Mutant(
        "recovery reads the worker's infrastructure_pid as this host's",
        "sources/prefect/decisions.py",
        "if host == hostname and container_id and not any(",
        "if container_id and not any(",
        ("mixed-fleet",),
    ),
    Mutant(
        "a claim's history check skipped",
        "sources/prefect/flowruns.py",
        "return ClaimAnswer(fresh or self.claim_stands(run_id, pending_id))",
        "return ClaimAnswer(True)",
        ("many-prefect",),
    ),
]
