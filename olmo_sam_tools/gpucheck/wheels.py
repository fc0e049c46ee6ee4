"""The wheels the GPU check needs on a machine without network: ``scripts/gpu-wheels.sh``.

The target machine (one H100/H200) already has Python 3.12 with torch (CUDA), transformers,
accelerate, peft and numpy (:data:`DEVICE_PROVIDED`). Everything else the check imports travels
as wheels for CPython 3.12 / manylinux x86_64, within :data:`BUDGET_MIB`:

* olmo-sam itself (built from this checkout),
* ``ai2-olmo-core==3.0.0`` and the part of its dependency closure the device lacks (required:
  OLMo-core does not import without, e.g., ``cached-path`` -> ``boto3``/``google-cloud-storage``),
* ``bitsandbytes==0.50.2`` (optional: only the ``bnb`` section needs it), **slimmed**: its wheel
  carries one native library per CUDA/ROCm/XPU toolkit (42 MiB); the libraries for toolkits no
  torch 2.11 CUDA build uses (CUDA 11.8/12.1/12.4, ROCm, XPU) are removed from the wheel (and its
  RECORD), which leaves CUDA 12.6/12.8/13.0/13.2 and the CPU library.

Versions are those of this environment (what the CPU tests ran with), dependencies followed
from the installed metadata with markers evaluated for the target. What does not fit the budget
is left out, optional wheels first, and the manifest says so. Install on the device without
touching torch: ``pip install --no-index --no-deps --target DIR WHEEL...`` (``scripts/gpu-check.sh``
does it for the wheels whose distribution is missing).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata as md
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = [
    "plan",
    "fit_budget",
    "WheelItem",
    "main",
    "BUDGET_MIB",
    "DEVICE_PROVIDED",
    "OPTIONAL_IMPORTS",
    "device_provided",
]

BUDGET_MIB = 60.0
PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: on the target machine already (with their own dependencies)
DEVICE_PROVIDED = ("torch", "transformers", "accelerate", "peft", "numpy")
#: (distribution, pinned version, required)
ROOTS = (("ai2-olmo-core", "3.0.0", True), ("bitsandbytes", "0.50.2", False))
#: declared dependencies the check never imports (checked against the dry run's imports by
#: tests/test_gpu_check.py), left out to save space
NOT_IMPORTED = {"pandas": "declared by ai2-olmo-core 3.0.0, imported nowhere in olmo_core"}
#: distributions the dry run imports only because they are installed here (optional imports of
#: requests, setuptools' pkg_resources, rich/torch helpers): not shipped, not needed
OPTIONAL_IMPORTS = {
    "attrs": "optional import",
    "chardet": "requests falls back to charset-normalizer",
    "colorama": "optional import",
    "backports-tarfile": "setuptools' vendored copy is used without it",
    "jaraco-context": "as backports-tarfile",
    "jaraco-functools": "as backports-tarfile",
    "jaraco-text": "as backports-tarfile",
    "more-itertools": "as backports-tarfile",
}
#: files removed from a wheel (see the module docstring)
SLIM = {
    "bitsandbytes": (
        "bitsandbytes/libbitsandbytes_cuda118.so",
        "bitsandbytes/libbitsandbytes_cuda121.so",
        "bitsandbytes/libbitsandbytes_cuda124.so",
        "bitsandbytes/libbitsandbytes_rocm*.so",
        "bitsandbytes/libbitsandbytes_xpu*.so",
    )
}


@dataclass
class WheelItem:
    name: str
    version: Optional[str]  # None: built from this checkout
    required: bool
    why: str
    file: Optional[str] = None
    size: Optional[int] = None
    included: Optional[bool] = None
    note: str = ""


def _target_env() -> Dict[str, str]:
    env = default_environment()
    env.update(
        python_version=PYTHON,
        python_full_version=f"{PYTHON}.0",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        os_name="posix",
        extra="",
    )
    return env


def _requires(name: str) -> List[str]:
    env = _target_env()
    out = []
    for r in md.distribution(name).requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate(env):
            out.append(canonicalize_name(req.name))
    return out


def closure(roots: Iterable[str], stop: Iterable[str] = ()) -> Dict[str, str]:
    """Every distribution reachable from ``roots`` -> the one that first required it; the
    dependencies of ``stop`` are not followed."""
    stop = set(stop)
    seen: Dict[str, str] = {}
    stack = [(canonicalize_name(r), "root") for r in roots]
    while stack:
        name, parent = stack.pop(0)
        if name in seen:
            continue
        seen[name] = parent
        if name in stop:
            continue
        try:
            stack += [(dep, name) for dep in _requires(name)]
        except md.PackageNotFoundError:
            seen[name] = f"{parent} (not installed here)"
    return seen


def device_provided() -> Set[str]:
    return set(closure(DEVICE_PROVIDED))


def plan() -> List[WheelItem]:
    """The wheels to ship, in priority order (olmo-sam, required, then optional)."""
    provided = device_provided()
    items = [WheelItem("olmo-sam", None, True, "this project, built from the checkout")]
    seen = {"olmo-sam"}
    for required in (True, False):
        for root, version, req in ROOTS:
            if req != required:
                continue
            for name, parent in closure([root], stop=NOT_IMPORTED).items():
                if name in provided or name in seen:
                    continue
                seen.add(name)
                if name in NOT_IMPORTED:
                    items.append(
                        WheelItem(
                            name,
                            md.version(name),
                            False,
                            f"dependency of {parent}",
                            included=False,
                            note=f"left out: {NOT_IMPORTED[name]}",
                        )
                    )
                    continue
                pin = version if name == canonicalize_name(root) else md.version(name)
                why = "pinned by the GPU check" if parent == "root" else f"dependency of {parent}"
                items.append(WheelItem(name, pin, required, why))
    return items


def fit_budget(items: Sequence[WheelItem], budget_bytes: int) -> List[WheelItem]:
    """Mark which downloaded items fit: required ones first, then optional ones, each in order;
    an item that does not fit is left out (and says so)."""
    total = 0
    for required in (True, False):
        for it in items:
            if it.required != required or it.included is False or it.size is None:
                continue
            if total + it.size <= budget_bytes:
                it.included = True
                total += it.size
            else:
                it.included = False
                it.note = (it.note + "; " if it.note else "") + (
                    f"left out: {it.size / 2**20:.1f} MiB does not fit the {budget_bytes / 2**20:.0f} MiB "
                    f"budget ({total / 2**20:.1f} MiB used)"
                )
    return list(items)


def slim_wheel(path: Path, patterns: Sequence[str]) -> List[str]:
    """Rewrite ``path`` without the members matching ``patterns`` (and their RECORD lines)."""
    tmp = path.with_name(path.name + ".tmp")
    dropped: List[str] = []
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if any(fnmatch.fnmatch(info.filename, p) for p in patterns):
                dropped.append(info.filename)
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = (
                    "\n".join(ln for ln in lines if not any(fnmatch.fnmatch(ln.split(",")[0], p) for p in patterns))
                    + "\n"
                ).encode()
            dst.writestr(info, data)
    tmp.replace(path)
    return dropped


def _pip_download(dest: Path, specs: Sequence[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON,
        "--implementation",
        "cp",
        "--abi",
        "cp312",
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-d",
        str(dest),
    ]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + list(specs), check=True)


def _wheel_name(file: str) -> str:
    return canonicalize_name(file.split("-")[0])


def build(dest: Path, repo: Path, budget_mib: float = BUDGET_MIB) -> List[WheelItem]:
    from olmo_sam.output import atomic_write_text, markdown_table, write_json

    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    items = plan()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(repo)],
        check=True,
    )
    _pip_download(dest, [f"{it.name}=={it.version}" for it in items if it.version and it.included is not False])
    files = {_wheel_name(f.name): f for f in dest.glob("*.whl")}
    for it in items:
        f = files.get(canonicalize_name(it.name))
        if f is None:
            if it.included is not False:
                it.included, it.note = False, "no wheel for the target was downloaded"
            continue
        if it.name in SLIM:
            dropped = slim_wheel(f, SLIM[it.name])
            it.note = f"slimmed: removed {len(dropped)} native libraries ({', '.join(Path(d).name for d in dropped)})"
        it.file, it.size = f.name, f.stat().st_size
    fit_budget(items, int(budget_mib * 2**20))
    for it in items:
        if it.file and not it.included:
            (dest / it.file).unlink()
    total = sum(it.size or 0 for it in items if it.included)
    write_json(
        dest / "manifest.json",
        {
            "budget_mib": budget_mib,
            "total_mib": total / 2**20,
            "python": PYTHON,
            "platforms": list(PLATFORMS),
            "device_provided": list(DEVICE_PROVIDED),
            "wheels": [asdict(it) for it in items],
        },
    )
    rows = [{**asdict(it), "size_mib": (it.size or 0) / 2**20} for it in items]
    atomic_write_text(
        dest / "MANIFEST.md",
        f"# GPU-check wheels: {total / 2**20:.1f} of {budget_mib:g} MiB\n\n"
        + markdown_table(["name", "version", "required", "included", "size_mib", "file", "why", "note"], rows),
    )
    return items


def describe(items: Sequence[WheelItem], budget_mib: float) -> str:
    lines = [
        f"GPU-check wheels for CPython {PYTHON}, {PLATFORMS[0]} (and older manylinux); budget {budget_mib:g} MiB;",
        f"already on the device: {', '.join(DEVICE_PROVIDED)} (and their dependencies)",
    ]
    for it in items:
        spec = f"{it.name}=={it.version}" if it.version else f"{it.name} (built from this checkout)"
        kind = "required" if it.required else "optional"
        state = f"  [{it.note}]" if it.note else ""
        lines.append(f"  {kind:8} {spec:40} {it.why}{state}")
    if any(it.name in SLIM for it in items):
        for name, pats in SLIM.items():
            lines.append(f"  slim {name}: remove {', '.join(Path(p).name for p in pats)}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-wheels.sh", description="Wheels for the offline GPU check.")
    p.add_argument("--dest", default="gpu-wheels", help="folder for the wheels (default: gpu-wheels)")
    p.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    p.add_argument("--list", action="store_true", help="print the plan and the budget; download nothing")
    args = p.parse_args(argv)
    if args.budget_mib <= 0:
        p.error("--budget-mib must be positive")
    if args.list:
        print(describe(plan(), args.budget_mib))
        return 0
    repo = Path(__file__).resolve().parents[2]
    items = build(Path(args.dest), repo, args.budget_mib)
    print(describe(items, args.budget_mib))
    total = sum(it.size or 0 for it in items if it.included)
    left = [it.name for it in items if it.included is False]
    print(f"{total / 2**20:.1f} MiB in {args.dest}; left out: {', '.join(left) or 'nothing'}")
    return 0 if all(it.included for it in items if it.required) else 1


if __name__ == "__main__":
    sys.exit(main())
