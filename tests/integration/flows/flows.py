"""Flows the Prefect integration tests deploy (baked into the test flow image at /flows)."""

import time

from prefect import flow


@flow(log_prints=True)
def hello(name: str = "dagent") -> str:
    print(f"hello {name}")
    return f"hello {name}"


@flow
def boom() -> None:
    raise ValueError("this flow fails on purpose")


@flow(log_prints=True)
def sleepy(seconds: float = 60) -> None:
    print(f"sleeping {seconds}s")
    time.sleep(seconds)
