"""dagent: a declarative, config-driven Docker agent for Prefect 3 work pools and a local inbox."""

__version__ = "0.1.0"
__all__ = ["__version__"]
