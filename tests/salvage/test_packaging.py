"""`pip install .` puts one top-level package into site-packages: `salvage` (issue 14)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("connectors", "features", "scoring", "policy", "sinks", "flows", "dashboards")


def test_pip_install_puts_only_salvage_top_level(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    # this venv's pip (and its setuptools, from the dev extras: no network) installs into the
    # fresh one's prefix; no dependencies: only the layout is checked
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--prefix",
            str(env_dir),
            "--quiet",
            "--no-deps",
            "--ignore-installed",  # never touch the running environment's own install
            "--no-build-isolation",
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    site = Path(purelib)
    top = sorted(
        p.name
        for p in site.iterdir()
        if not p.name.endswith((".dist-info", ".pth"))
        and p.name != "__pycache__"
        and not p.name.startswith("_")
    )
    assert top == ["salvage"], top
    pkg = site / "salvage"
    for folder in FOLDERS:  # the repo's folders, installed inside the namespace
        assert (pkg / folder / "__init__.py").is_file(), folder
    assert (pkg / "policy" / "default.yaml").is_file()  # package data travels with it
    # a pure module imports from the installed copy, not from this checkout
    out = subprocess.run(
        [str(py), "-c", "import salvage.features.eventtime as m; print(m.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert out.startswith(str(site)), out
    assert sysconfig.get_paths()["purelib"] != purelib  # really a separate environment
