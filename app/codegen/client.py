"""Write a typed Python client for openapi.yaml with openapi-python-client.

    python -m app.codegen.client                    # into build/client (git-ignored)
    python -m app.codegen.client --output DIR

The result is an installable project (`pip install build/client`) whose package,
`taskrun_api_client`, has one module per operation (`sync`, `sync_detailed`, `asyncio`,
`asyncio_detailed`) and attrs classes for the document's schemas.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "taskrun_api_client"
DEFAULT_OUTPUT = Path("build/client")
GENERATOR_CONFIG = {
    "project_name_override": "taskrun-api-client",
    "package_name_override": PACKAGE,
}


class ClientGenerationFailed(RuntimeError):
    """openapi-python-client refused the document or warned about it."""


def generate_client(*, spec: Path, output: Path) -> Path:
    """Generate the client project into `output` (replacing it); return its package directory.

    Any warning of the generator fails the generation: a part of the document it skipped
    would be a part of the contract no generated client can use.
    """
    tools = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.json"
        config.write_text(json.dumps(GENERATOR_CONFIG))
        command = [
            str(tools / "openapi-python-client"), "generate",
            "--path", str(spec),
            "--output-path", str(output),
            "--config", str(config),
            "--meta", "uv",
            "--overwrite",
            "--fail-on-warning",
        ]  # fmt: skip
        # The generator formats its output with ruff: the one installed beside it.
        environment = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"}
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env=environment
        )
    if result.returncode != 0:
        raise ClientGenerationFailed(f"{' '.join(command)}\n{result.stdout}{result.stderr}")
    return output / PACKAGE


def main(argv: list[str] | None = None) -> int:
    """Generate the client where asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("openapi.yaml"))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)
    try:
        package = generate_client(spec=arguments.spec, output=arguments.output)
    except ClientGenerationFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {package}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
