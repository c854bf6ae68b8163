"""Make the example deployment over Prefect's REST API: flow `hello`, pool `docker`, image FLOWS_IMAGE."""

import json
import os
import urllib.error
import urllib.request

API = os.environ["PREFECT_API_URL"].rstrip("/")


def call(method: str, path: str, body: object = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(API + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read()
    return json.loads(text) if text else None


pool = os.environ.get("WORK_POOL", "docker")
try:
    call("POST", "/work_pools/", {"name": pool, "type": "docker"})
except urllib.error.HTTPError as e:
    if e.code != 409:  # it exists already: fine
        raise
flow = call("POST", "/flows/", {"name": "hello"})
deployment = call(
    "POST",
    "/deployments/",
    {
        "name": "hello-compose",
        "flow_id": flow["id"],
        "work_pool_name": pool,
        "entrypoint": "flows.py:hello",
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": "/flows"}}],
        "job_variables": {"image": os.environ["FLOWS_IMAGE"], "image_pull_policy": "Never"},
    },
)
print(f"deployment hello/hello-compose: {deployment['id']}")
