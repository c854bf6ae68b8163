"""Where runs come from: the embedded inbox and the Prefect 3 API, behind one protocol."""
