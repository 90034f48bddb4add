"""The paper's pipelines, run in this process exactly as the `emo` command runs them (same run folders,
resumable, same report). Keyword arguments are the command's options: `limit=2` is `--limit 2`,
`max_new_tokens=40` is `--max-new-tokens 40`, `full=True` is `--full`. Progress bars update in place, in a
terminal and in Jupyter; `quiet=True` hides them.
"""
import contextlib
import sys

from . import _native


def _flags(options: dict) -> list:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


@contextlib.contextmanager
def _progress(stream=None):
    """Draws the core's progress bars on `stream` (default: sys.stderr, which Jupyter shows under the
    cell), each redraw replacing the line; a bar cleared away (an empty line) ends its line."""
    out = stream or sys.stderr
    open_line = [False]

    def draw(line: str) -> None:
        if line:
            out.write("\r" + line)
        elif open_line[0]:
            out.write("\n")
        open_line[0] = bool(line)
        out.flush()

    _native.set_progress(draw)
    try:
        yield
    finally:
        _native.set_progress(None)
        if open_line[0]:
            out.write("\n")
            out.flush()


def emo(*args, **options) -> None:
    """Runs any `emo` command: `emo("circuits", "build", run="runs/paper")` is
    `emo circuits build --run runs/paper`."""
    with _progress():
        _native.run_command([str(a) for a in args] + _flags(options))


def paper(out: str = "runs/paper", **options) -> None:
    """The whole paper on one model: sections 5, 6 and 7, resumable, one report (`OUT/report.md`)."""
    emo("paper", out=out, **options)


def section5(out: str = "runs/section5", **options) -> None:
    """Section 5: elicitation on both splits, emotion directions, steering, report."""
    emo("section5", out=out, **options)


def elicit(**options) -> None:
    """Section 5, step 1: elicitation replies and residuals, judged."""
    emo("elicit", **options)


def directions(**options) -> None:
    """Section 5, step 2: emotion directions and their exports and analyses."""
    emo("directions", **options)


def steer(**options) -> None:
    """Section 5, step 3: steered replies to neutral prompts, judged."""
    emo("steer", **options)


def report(**options) -> None:
    """A run's report.md."""
    emo("report", **options)


def attribute(**options) -> None:
    """Section 6, step 1: neuron contributions, head importances and delta_mu."""
    emo("attribute", **options)


def sweep(**options) -> None:
    """Section 6, step 2: ablation or enhancement sweeps against random units."""
    emo("sweep", **options)


def importance(**options) -> None:
    """Section 7, step 1: sublayer importance."""
    emo("importance", **options)


def circuits(action: str = "build", **options) -> None:
    """Section 7, step 2: `circuits("allocate" | "build" | "show", run=...)`."""
    emo("circuits", action, **options)


def modulate(**options) -> None:
    """Section 7, step 3: circuit-modulated replies, judged."""
    emo("modulate", **options)


def merge(run: str, **options) -> None:
    """Combines the shards of a run's sharded stages."""
    emo("merge", run, **options)
