"""taskrun-api: Prefect 3's Task Runs REST API, served contract-first from openapi.yaml."""

__version__ = "0.1.0"
