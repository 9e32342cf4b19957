"""Third-party distillers: entry points of an installed distribution, and --import of a module file."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

PLUGIN = textwrap.dedent('''
    """A test plugin: pulls the student's user vectors towards the teacher's first dims."""
    from dataclasses import dataclass

    import torch

    from kdbench import Distiller, DistillerConfig


    @dataclass(frozen=True)
    class MyKDConfig(DistillerConfig):
        weight: float = 0.1


    class MyKD(Distiller):
        description = "test plugin distiller"
        Config = MyKDConfig

        def loss(self, out):
            t = self.teacher.user_repr[out.users, : out.user_repr.shape[1]]
            return {"kd_plugin": ((out.user_repr - t) ** 2).sum()}
''')

QUICK = ["--set", "train.max_epochs=2", "--set", "teacher.dim=8", "--set", "student.dim=4", "--quiet"]


def _run(args, env_extra, cwd):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "kdbench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture
def plugin_dist(tmp_path):
    """A minimal installed distribution on a sys.path entry: a package plus .dist-info with entry points."""
    site = tmp_path / "site"
    (site / "kdbench_testplugin").mkdir(parents=True)
    (site / "kdbench_testplugin" / "__init__.py").write_text(PLUGIN)
    info = site / "kdbench_testplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-testplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdbench.distillers]\nmykd = kdbench_testplugin:MyKD\n")
    return site


def test_entry_point_distiller_is_found_and_runs(plugin_dist, tiny_folder, tmp_path):
    env = {"PYTHONPATH": str(plugin_dist)}
    listed = _run(["list", "methods"], env, tmp_path)
    assert listed.returncode == 0 and "mykd" in listed.stdout and "test plugin distiller" in listed.stdout
    out = tmp_path / "out"
    res = _run(["run", "--datasets", str(tiny_folder), "--methods", "student,mykd", "--out", str(out), *QUICK],
               env, tmp_path)
    assert res.returncode == 0, res.stderr
    rec = json.loads((out / "cells" / "tinyds__bprmf__mykd__seed0.json").read_text())
    assert rec["status"] == "ok" and "kd_plugin" in rec["history"][0]["losses"]
    assert "entry point" in rec["method_origin"]


def test_plugin_autoload_can_be_disabled(plugin_dist, tiny_folder, tmp_path):
    res = _run(["run", "--datasets", str(tiny_folder), "--methods", "mykd", "--out", str(tmp_path / "o"), *QUICK],
               {"PYTHONPATH": str(plugin_dist), "KDBENCH_DISABLE_PLUGIN_AUTOLOAD": "1"}, tmp_path)
    assert res.returncode == 2 and "unknown distiller 'mykd'" in res.stderr


def test_import_option_registers_a_module_file(tiny_folder, tmp_path):
    mod = tmp_path / "my_method.py"
    mod.write_text(PLUGIN + "\nfrom kdbench import register_distiller\nregister_distiller('filekd')(MyKD)\n")
    out = tmp_path / "out"
    res = _run(["run", "--datasets", str(tiny_folder), "--methods", "filekd", "--import", str(mod), "--out",
                str(out), *QUICK], {}, tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "cells" / "tinyds__bprmf__filekd__seed0.json").read_text())["status"] == "ok"


def test_readme_plugin_example_runs(tiny_folder, tmp_path):
    """The complete minimal example in the README works as documented."""
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n# mykd.py\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "mykd.py").write_text(code)
    out = tmp_path / "out"
    res = _run(["run", "--import", str(tmp_path / "mykd.py"), "--methods", "student,cosine_kd", "--datasets",
                str(tiny_folder), "--out", str(out), *QUICK], {}, tmp_path)
    assert res.returncode == 0, res.stderr
    rec = json.loads((out / "cells" / "tinyds__bprmf__cosine_kd__seed0.json").read_text())
    assert rec["status"] == "ok" and "kd_cos" in rec["history"][0]["losses"]


def test_broken_plugins_are_listed_under_their_own_kind(tmp_path):
    """An entry point that fails to import is reported as BROKEN where its kind is listed, and only there; kdbench
    itself still works."""
    site = tmp_path / "site"
    info = site / "kdbench_broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdbench.distillers]\nbadkd = no_such_module:X\n\n"
                                           "[kdbench.datasets]\nbadds = no_such_module:Y\n")
    listed = _run(["list"], {"PYTHONPATH": str(site)}, tmp_path)
    assert listed.returncode == 0, listed.stderr
    _, *parts = re.split(r"^(methods|backbones|datasets):$", listed.stdout, flags=re.M)
    sections = dict(zip(parts[::2], parts[1::2]))
    assert "badkd" in sections["methods"] and "BROKEN" in sections["methods"] and "freqd" in sections["methods"]
    assert "badds" in sections["datasets"] and "no_such_module" in sections["datasets"]
    assert "BROKEN" not in sections["backbones"] and "badkd" not in sections["datasets"]
