"""The example's flow: what a deployment of the compose stack runs."""

from prefect import flow


@flow(log_prints=True)
def hello(name: str = "compose") -> str:
    print(f"hello {name}, from a container dagent started")
    return f"hello {name}"
