"""Install Prefect's server, at one version, into a virtualenv of its own.

    python -m tests.bench.prefect_install --venv .venv-prefect-server --version 3.9.1 \
        --replace certifi==2026.10.18

`pip install prefect==3.9.1` cannot resolve here: the wheel asks for a `certifi` newer than
the registry has. So this downloads the wheel alone, installs the requirements its METADATA
lists (without the extras-only ones, and with `--replace`d pins swapped in), then installs the
wheel itself with `--no-deps`.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# A requirement's project name: everything before the version, extras or marker.
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"\bextra\s*==")


def project_name(requirement: str) -> str:
    """The normalised project name of a requirement line (`Certifi>=1` -> `certifi`)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def wheel_requirements(wheel: Path) -> list[str]:
    """The `Requires-Dist` lines of a wheel's METADATA, as written there."""
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise RuntimeError(f"{wheel.name}: expected one METADATA, found {names}")
        metadata = email.parser.Parser().parsestr(archive.read(names[0]).decode("utf-8"))
    return list(metadata.get_all("Requires-Dist") or [])


def is_extra_only(requirement: str) -> bool:
    """True for a requirement that only an extra (`; extra == 'aws'`) asks for."""
    _, _, marker = requirement.partition(";")
    return bool(_EXTRA_MARKER.search(marker))


def install_requirements(requirements: list[str], replacements: list[str]) -> list[str]:
    """The requirements to install: extras-only ones dropped, replaced ones swapped."""
    replaced = {project_name(requirement): requirement for requirement in replacements}
    chosen: list[str] = []
    for requirement in requirements:
        if is_extra_only(requirement):
            continue
        chosen.append(replaced.pop(project_name(requirement), requirement))
    if replaced:
        raise RuntimeError(f"the wheel does not require {sorted(replaced)}; nothing to replace")
    return chosen


def pip(venv: Path, *arguments: str) -> None:
    """Run the virtualenv's pip, failing loudly."""
    command = [str(venv / "bin" / "python"), "-m", "pip", *arguments]
    print("$", " ".join(command), flush=True)  # noqa: T201
    subprocess.run(command, check=True)


def download_wheel(venv: Path, version: str, directory: Path) -> Path:
    """Download prefect's wheel (no dependencies) into `directory`."""
    pip(venv, "download", "--quiet", "--no-deps", "--only-binary", ":all:",
        "--dest", str(directory), f"prefect=={version}")  # fmt: skip
    wheels = sorted(directory.glob(f"prefect-{version}-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip downloaded no wheel of prefect {version}")
    return wheels[0]


def install(venv: Path, version: str, replacements: list[str]) -> None:
    """Create `venv` if needed and install prefect `version` into it."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(venv, "install", "--quiet", "--upgrade", "pip")
    with tempfile.TemporaryDirectory() as directory:
        wheel = download_wheel(venv, version, Path(directory))
        requirements = install_requirements(wheel_requirements(wheel), replacements)
        requirements_file = Path(directory) / "requirements.txt"
        requirements_file.write_text("\n".join(requirements) + "\n")
        pip(venv, "install", "--quiet", "--requirement", str(requirements_file))
        pip(venv, "install", "--quiet", "--no-deps", str(wheel))


def main() -> int:
    """Parse the arguments and install."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, required=True, help="the virtualenv to install into")
    parser.add_argument("--version", required=True, help="prefect's version, e.g. 3.9.1")
    parser.add_argument(
        "--replace",
        action="append",
        default=[],
        metavar="REQUIREMENT",
        help="use this requirement instead of the wheel's one for the same project",
    )
    arguments = parser.parse_args()
    install(arguments.venv, arguments.version, arguments.replace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
