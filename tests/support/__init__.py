"""What the test suites and bench/ share: where the repository is, the real components (Docker, a
registry, Prefect), clients for them, fakes at dagent's seams, the mutation harness and the corpus
of bad inputs. A test module imports from here, never from another test module."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
