"""One version string: every CLI prints it, CITATION.cff carries the same."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from ubf.core.version import __version__


@pytest.mark.parametrize("command", [["Unmixing.py"], ["Diffusion.py"], ["Synthesis.py"], ["Evaluate.py"],
                                     ["demo.py"], ["-m", "ubf.data.prepare"]])
def test_every_cli_prints_the_version(command):
    result = subprocess.run([sys.executable, *command, "--version"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(" " + __version__)


def test_citation_and_license():
    with open(os.path.join(ROOT, "CITATION.cff"), encoding="utf-8") as f:
        citation = f.read()
    assert f"\nversion: {__version__}" in citation
    assert "Unmixing Before Fusion: A Generalized Paradigm for Multi-Source-based Hyperspectral Image Synthesis" in citation
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        assert f.readline().strip() == "MIT License"
