"""``python -m retinanet_plugin.env``: the environment report users run on their own installs."""

import json
import subprocess
import sys

from retinanet_plugin import env
from retinanet_plugin.layers import focal_loss_op_available


def test_report_names_the_op_detectron2_and_torch():
    out = subprocess.run(
        [sys.executable, "-m", "retinanet_plugin.env", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(out.stdout)
    report = result["report"]
    assert out.returncode == (0 if focal_loss_op_available() else 1), out.stderr
    import detectron2
    import torch

    assert report["torch"] == torch.__version__
    assert report["detectron2"] == detectron2.__version__
    assert report["CPU"] and report["CPU"] != "unknown CPU"
    if focal_loss_op_available():
        assert report["op"].startswith("loaded (") and report["op CPU kernels"] in (
            "AVX512",
            "AVX2",
            "DEFAULT",
        )
        assert result["problems"] == []


def test_a_missing_requirement_is_a_problem_with_a_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails as if not installed
    assert env.main([]) == 1
    out = capsys.readouterr().out
    assert "problem: pycocotools cannot be imported" in out and "NOT READY" in out


def test_an_unsupported_python_is_named(monkeypatch):
    monkeypatch.setattr(env, "SUPPORTED_PYTHONS", ((3, 99),))
    _, problems = env.collect()
    assert any("is not supported: use one of 3.99" in p for p in problems)
