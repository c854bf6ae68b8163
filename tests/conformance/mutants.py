"""The mutants the conformance suite must catch: each breaks one thing dagent does as Prefect's worker does.

`python -m tests.conformance --mutants` runs each mutant's catchers (cases of cases.py) against dagent
broken that way; a mutant is caught when one of them shows a difference no exemption covers.
"""

from __future__ import annotations

from tests.support.mutants import Mutant

MUTANTS: list[Mutant] = [
    Mutant(
        "auto_remove mapping deleted",
        "sources/prefect/jobvars.py",
        'data["keep"] = "never"',
        "pass",
        ("auto_remove",),
    ),
    Mutant(
        "memswap_limit dropped",
        "sources/prefect/jobvars.py",
        'data["memory_swap"] = variables["memswap_limit"]',
        "pass",
        ("mem_limit and memswap_limit",),
    ),
    Mutant("dns dropped", "spec.py", '"dns": list(self.dns) or None,', '"dns": None,', ("create kwargs dns",)),
    Mutant(
        "stop_signal dropped",
        "spec.py",
        '"stop_signal": self.stop_signal,',
        '"stop_signal": None,',
        ("create kwargs stop_signal",),
    ),
    Mutant("privileged dropped", "spec.py", '"privileged": self.privileged,', '"privileged": False,', ("privileged",)),
    Mutant(
        "exit-0 runs never CRASHED",
        "sources/prefect/decisions.py",
        'return EndAction("crash", f"the container exited with code 0 but the flow run is {kind or \'not final\'}")',
        'return EndAction("leave")',
        ("defaults only",),
    ),
    Mutant(
        "Submitting skipped",
        "sources/prefect/flowruns.py",
        'return self.set_state(run_id, "PENDING", "Submitting", self.note, quiet=True)',
        "return True",
        ("defaults only",),
    ),
    Mutant(
        "worker labels not set",
        "sources/prefect/reporting.py",
        "if not self.api.worker_labels:",
        "if True:",
        ("defaults only",),
    ),
    Mutant(
        "submitted event not emitted",
        "sources/prefect/eventchains.py",
        'chain.submitted = self._emit("prefect.worker.submitted-flow-run", self._me, chain.related)',
        "chain.submitted = None",
        ("flow completes",),
    ),
    Mutant(
        "{{ $NAME }} filled from the agent's environment",
        "sources/prefect/template.py",
        "value = NOT_SET if name.startswith(ENV_PREFIX) else lookup(values, name)",
        "value = __import__('os').environ.get(name[1:], '') if name.startswith(ENV_PREFIX) else lookup(values, name)",
        ("env placeholder of the worker's environment",),
    ),
]
