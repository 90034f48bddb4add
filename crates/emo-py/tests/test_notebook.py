"""examples/notebooks/quickstart.ipynb runs headless from top to bottom, in a scratch folder."""
import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(os.path.join(ROOT, "examples", "notebooks", "quickstart.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "log p(Paris)" in text and "anger:" in text
    # Section 5's progress bars reached the notebook (stderr, redrawn in place).
    bars = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "\relicit [" in bars and "18/18 prompts" in bars
    # Both figures were drawn, and section 5 wrote its run where the notebook said.
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert (tmp_path / "runs" / "quickstart" / "report.md").exists()
