"""The wheels the H200 check carries to the lent machine: the pinned list (wheels.txt), what that
machine already has (device_packages.txt), and the check of a fetched wheel directory.

    python experiments/gpu_smoke/wheels.py check [DIR]   # one pure-Python wheel per pin, sizes, total

fetch_wheels.sh runs the check after fetching; h200_check.sh installs what it fetched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEELS_TXT = HERE / "wheels.txt"
DEVICE_PACKAGES_TXT = HERE / "device_packages.txt"
WHEEL_DIR = HERE / "wheels"
CARRY_LIMIT = 64 * 2**20
"""What the device tool carries per call: the working tree (about 1 MiB) and the wheels together."""
WHEELS_LIMIT = CARRY_LIMIT // 2
"""The wheels' share of it, leaving the rest to the working tree."""


class WheelError(ValueError):
    """A fetched wheel directory does not match wheels.txt."""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> list[str]:
    """The non-comment lines of a list file."""
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def pins(path: Path = WHEELS_TXT) -> dict[str, str]:
    """normalized name -> pinned version; every line must be `name==version`."""
    out = {}
    for line in listed(path):
        name, sep, version = line.partition("==")
        if not sep or not version or any(c in version for c in "<>=!~*, "):
            raise WheelError(f"{path}: {line!r} is not pinned as name==version")
        out[normalize(name)] = version
    return out


def device_packages(path: Path = DEVICE_PACKAGES_TXT) -> set[str]:
    return {normalize(name) for name in listed(path)}


def check_wheel_dir(directory: Path, pinned: dict[str, str], limit: int = WHEELS_LIMIT) -> list[tuple[str, int]]:
    """(file, bytes) of each wheel in `directory`, after checking that there is exactly one
    pure-Python wheel (tag py3-none-any or py2.py3-none-any) of each pinned version, nothing
    else, and that they total at most `limit` bytes."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    found: dict[str, str] = {}
    sizes = []
    for path in files:
        parts = path.name[: -len(".whl")].split("-") if path.name.endswith(".whl") else []
        if len(parts) not in (5, 6):
            raise WheelError(f"{path}: not a wheel (fetch_wheels.sh builds sdists into wheels and removes them)")
        name, version, tags = normalize(parts[0]), parts[1], "-".join(parts[-3:])
        if tags not in ("py3-none-any", "py2.py3-none-any"):
            raise WheelError(f"{path.name}: tag {tags} is not pure Python; the lent machine's Python may differ from this one")
        if name not in pinned:
            raise WheelError(f"{path.name}: {name} is not in {WHEELS_TXT.name}")
        if name in found:
            raise WheelError(f"{path.name}: a second wheel of {name} (two versions stop the install)")
        if version != pinned[name]:
            raise WheelError(f"{path.name}: version {version}, but {WHEELS_TXT.name} pins {name}=={pinned[name]}")
        found[name] = version
        sizes.append((path.name, path.stat().st_size))
    missing = sorted(set(pinned) - set(found))
    if missing:
        raise WheelError(f"{directory}: no wheel for {', '.join(missing)}; run experiments/gpu_smoke/fetch_wheels.sh")
    total = sum(size for _, size in sizes)
    if total > limit:
        raise WheelError(f"{directory}: the wheels total {total / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB they may take of what the device tool carries")
    return sizes


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "check":
        print(__doc__)
        return 2
    directory = Path(argv[1]) if len(argv) > 1 else WHEEL_DIR
    if not directory.is_dir():
        print(f"error: no wheel directory {directory}: run experiments/gpu_smoke/fetch_wheels.sh, and carry it", file=sys.stderr)
        return 1
    try:
        sizes = check_wheel_dir(directory, pins())
    except WheelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, size in sizes:
        print(f"{size / 1024:9.1f} KiB  {name}")
    print(f"{sum(s for _, s in sizes) / 2**20:9.2f} MiB  in {len(sizes)} wheels ({directory}), limit {WHEELS_LIMIT / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
