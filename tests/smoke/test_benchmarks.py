"""The benchmarks run: each in a smoke mode on tiny inputs, so that one that breaks fails here. Their figures are
printed, never asserted (a time on this machine says nothing about a user's); what is checked is that each ran to
its summary line."""
import sys

import pytest

from workflow_helpers import REPO, run

pytestmark = pytest.mark.smoke

TINY = ["--shape", "16", "48", "48"]
# benchmark: (its smoke-mode arguments, a line of its printed summary)
SYNTHETIC = {
    "bench_metrics": ([*TINY, "--cases", "1"], "speed-up over the whole-volume distance transform baseline"),
    "bench_qc": ([*TINY, "--cases", "1"], "ratio QC / read"),
    "bench_ensemble": ([*TINY, "--members", "1", "2", "--baseline-members", "1"], "streamed peak grows"),
    "bench_new_scan": (["--shape", "24", "64", "64", "--patch-scale", "0.2", "--scans", "phantom"],
                       "voxels equal to nnU-Net's label map"),
}
# Each runs whole toy studies (about 10 minutes apiece on 2 cores): only their command lines are built here.
STUDIES = ("scale_rehearsal", "crop_seeds", "probability_encoding", "bench_predict", "oversampling")


def benchmark(name, *args, cwd=REPO):
    return run([sys.executable, "-m", f"benchmarks.{name}", *map(str, args)], cwd=cwd, timeout=900)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_benchmark_runs_on_tiny_inputs(name):
    args, summary = SYNTHETIC[name]
    assert summary in benchmark(name, *args).stdout


def test_prediction_options_benchmark_runs_on_the_smoke_study(smoke_run):
    result = benchmark("bench_predict_options", "--study", smoke_run, "--shape", 24, 64, 64, "--window", 16, 32, 32)
    for row in ("tile step 0.5 (default)", "torch resampling, argmax on logits", "label map only"):
        assert row in result.stdout


@pytest.mark.parametrize("name", STUDIES)
def test_study_benchmark_imports_and_builds_its_command_line(name):
    """Not a run: the module imports from the checkout as ``python -m benchmarks.<name>`` and its parser builds."""
    assert benchmark(name, "--help").stdout.startswith("usage:")
