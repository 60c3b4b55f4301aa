"""taskrun-api: Prefect 3's Task Runs REST API, served contract-first from openapi.yaml."""

import warnings

__version__ = "0.1.0"

# Connexion imports Starlette's test client as it loads, and Starlette then warns, once per
# process, that the test client would rather have httpx2: a package only the tests use, so
# a runtime install would print the warning at every start of every worker.
warnings.filterwarnings(
    "ignore",
    message="Using `httpx` with `starlette.testclient` is deprecated",
    category=UserWarning,
)
