"""The whole paper from Python, in process, on one scenario; then modulation with the circuits it found, equal
to `emo generate --modulate` from the command line."""
import json
import subprocess

import pytest

import emotion_circuits as ec


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("paper") / "run"
    ec.paper(out=str(run), limit=1, seeds=1, max_new_tokens=4, device="cpu", quiet=True)
    return run


def test_paper_writes_its_report_and_circuits(paper_run):
    report = (paper_run / "report.md").read_text()
    for section in ["paper section 5", "## Section 6", "## Section 7"]:
        assert section in report, f"report.md has no {section}"
    assert (paper_run / "circuits" / "all").is_dir()
    # Run again, it resumes: everything is complete, nothing is recomputed, the report is the same.
    before = (paper_run / "modulation-test.jsonl").stat().st_mtime_ns
    ec.paper(out=str(paper_run), limit=1, seeds=1, max_new_tokens=4, device="cpu", quiet=True)
    assert (paper_run / "modulation-test.jsonl").stat().st_mtime_ns == before


def test_modulation_equals_the_command_line(model, emo_bin, paper_run):
    circuits = paper_run / "circuits" / "all"
    prompt, n = "Tell me about your weekend.", 16
    cli = subprocess.run(
        [emo_bin, "generate", "--device", "cpu", "--json", "--max-new-tokens", str(n), "--modulate", "sadness", "--circuits", str(circuits), prompt],
        check=True, capture_output=True, text=True,
    )
    expected = json.loads(cli.stdout.strip().splitlines()[-1])
    modulator = ec.Modulator(model, str(circuits))
    conv = [{"role": "user", "content": prompt}]
    assert model.generate(conv, max_new_tokens=n, fwd_hooks=[modulator.hook("sadness")], return_tokens=True) == expected["token_ids"]
    reply = modulator.chat(prompt, emotion="sadness", max_new_tokens=12)
    assert isinstance(reply, str) and reply
    with pytest.raises(ec.EmoError, match="circuits"):
        ec.Modulator(model, str(paper_run / "no-circuits"))
