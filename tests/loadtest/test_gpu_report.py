"""The GPU check's report renders from the artifact the docs quote (docs/results/gpu-h200.json)."""

import json
from pathlib import Path

from loadtest.report import render

ARTIFACT = Path(__file__).resolve().parents[2] / "docs" / "results" / "gpu-h200.json"


def test_gpu_check_report_renders_every_measured_part() -> None:
    report = json.loads(ARTIFACT.read_text())
    text = render(report)
    assert "NVIDIA H200" in text
    assert "CUDAExecutionProvider" in text
    # one row per batch size of the model benchmark, and both engines of the service at each level
    assert text.count("| GPU (CUDA) |") == len(report["serve"]["config"]["levels"])
    assert text.count("| CPU (16 cores) |") == len(report["serve"]["config"]["levels"])
    assert f"{report['index']['ann_qps']:,.1f}" in text
    assert "no kernel image" in text


def test_gpu_check_report_without_the_service_steps_still_renders() -> None:
    report = json.loads(ARTIFACT.read_text())
    report["serve"] = report["serve_cpu"] = None
    text = render(report)
    assert "POST /profile" not in text and "queries/s" in text


def test_the_default_models_gpu_report_quotes_its_roofline_ratio() -> None:
    report = json.loads((ARTIFACT.parent / "gpu-h200-utpm-hist.json").read_text())
    text = render(report)
    ratio = report["serve"]["summary"]["ratios"]["post_vs_roofline"]
    assert "Engine roofline of the GPU run" in text and f"is {ratio:.3f} of it" in text
    assert "roofline of the CPU run" not in text  # left out of that artifact: it ran with the GPU settings
