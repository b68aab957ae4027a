"""Packaging: the configs ship with the package; the offline detectron2 stand-in behaves."""

import os
import shutil
import subprocess
import sys

import pytest

from solo_d2.model_zoo import get_config, get_config_file, list_configs
from tests.helpers import REPO_ROOT


def test_get_config_file_and_unknown_name():
    path = get_config_file("SOLOv2/R50_3x.yaml")
    assert os.path.isfile(path)
    cfg = get_config("SOLOv2/R50_3x.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "SOLO" and cfg.MODEL.SOLO.NUM_CLASSES == 80
    assert len(list_configs()) == len(list((REPO_ROOT / "configs").rglob("*.yaml")))
    with pytest.raises(
        FileNotFoundError,
        match="SOLOv9.yaml is not a solo_d2 config; available: .*SOLOv2/R50_1x.yaml",
    ):
        get_config_file("SOLOv9.yaml")


def test_non_editable_install_ships_the_configs(tmp_path):
    wheel_dir, target, src = tmp_path / "wheel", tmp_path / "site", tmp_path / "src"
    # a copy without the checkout's build/ (setuptools would reuse a stale build/lib)
    shutil.copytree(
        REPO_ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "output", "datasets", "tests", "*.egg-info", "__pycache__"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("solo_d2-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "import solo_d2, solo_d2.model_zoo as z; "
        "print(solo_d2.__file__); print(z.get_config_file('Synthetic/SOLOv2_demo.yaml')); "
        "print(z.get_config('Synthetic/SOLOv2_demo.yaml').SOLVER.MAX_ITER)"
    )
    # the wheel's install first; detectron2 may itself come from PYTHONPATH
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p),
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    pkg, cfg_path, max_iter = out.stdout.split()
    assert pkg.startswith(str(target)) and cfg_path.startswith(str(target))
    assert int(max_iter) > 0  # _BASE_ chain resolved inside the installed package
    # the install holds solo_d2 only: no benchmark code, tests or scripts
    top = sorted(
        p.name for p in target.iterdir() if not p.name.endswith((".dist-info", "__pycache__"))
    )
    assert top == ["solo_d2"], top
    assert not list((target / "solo_d2").rglob("*benchmark*"))


def test_detectron2_compiled_op_stand_in_names_the_op():
    from solo_d2.compat import has_compiled_ops

    if has_compiled_ops():
        pytest.skip("a detectron2 with compiled ops is installed")
    from detectron2 import _C

    with pytest.raises(
        RuntimeError, match="detectron2._C.deform_conv_forward is a compiled detectron2 op"
    ):
        _C.deform_conv_forward()
    from detectron2.utils.collect_env import collect_env_info

    assert "stand-in" in collect_env_info()  # default_setup() calls this; it must not raise


def test_passing_tests_leave_no_temporary_files(request):
    # pytest.ini: a session writes GB of checkpoints and exports; pytest's default keeps every
    # test's files of the last 3 sessions, which filled the CI machine's disk.
    assert request.config.getini("tmp_path_retention_policy") == "failed"
    assert int(request.config.getini("tmp_path_retention_count")) <= 1
