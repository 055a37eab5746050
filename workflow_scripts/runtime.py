"""Runtime and memory of every job from Snakemake's benchmark files, for the report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from workflow_scripts.io import pyplot, write_figure, write_table


def read_benchmarks(paths: list[Path], root: str = "benchmarks") -> pd.DataFrame:
    """One row per job: the rule (first folder under ``root``), the job (rest of the path) and Snakemake's
    measurements (wall seconds, peak resident memory in MB, CPU seconds; the mean over repeats)."""
    rows = []
    for path in map(Path, paths):
        parts = path.parts[path.parts.index(root) + 1:] if root in path.parts else path.parts[-2:]
        table = pd.read_csv(path, sep="\t")
        rule = Path(parts[0]).stem  # a rule with one job writes <root>/<rule>.tsv
        job = str(Path(*parts[1:]).with_suffix("")) if len(parts) > 1 else rule
        rows.append({"rule": rule, "job": job,
                     "seconds": float(table["s"].mean()), "max_rss_mb": float(table["max_rss"].mean()),
                     "cpu_seconds": float(table["cpu_time"].mean()) if "cpu_time" in table else float("nan")})
    return pd.DataFrame(rows, columns=["rule", "job", "seconds", "max_rss_mb", "cpu_seconds"])


def summarize_runtime(jobs: pd.DataFrame) -> pd.DataFrame:
    grouped = jobs.groupby("rule", sort=False)
    return grouped.agg(jobs=("job", "count"), total_seconds=("seconds", "sum"), median_seconds=("seconds", "median"),
                       max_seconds=("seconds", "max"), max_rss_mb=("max_rss_mb", "max")).reset_index()


def plot_runtime(summary: pd.DataFrame, out: Path) -> None:
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * len(summary) + 1.5), squeeze=True)
    left.barh(summary["rule"], summary["total_seconds"] / 60.0)
    left.set_xlabel("total wall time (min)")
    right.barh(summary["rule"], summary["max_rss_mb"] / 1024.0)
    right.set_xlabel("peak resident memory of one job (GiB)")
    right.set_yticklabels([])
    fig.tight_layout()
    write_figure(fig, out)


def write_runtime(paths: list[Path], jobs_out: Path, summary_out: Path, figure_out: Path) -> pd.DataFrame:
    jobs = read_benchmarks(paths)
    summary = summarize_runtime(jobs)
    write_table(jobs, jobs_out)
    write_table(summary, summary_out)
    plot_runtime(summary, figure_out)
    return summary


def benchmark_files(paths: list[str]) -> list[Path]:
    """The TSV files given, a folder standing for every ``*.tsv`` below it (sorted)."""
    return [f for p in map(Path, paths) for f in (sorted(p.rglob("*.tsv")) if p.is_dir() else [p])]


def summarize_runtime_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("summarize-runtime", "Wall time and memory per rule from Snakemake's benchmark files.")
    p.add_argument("--benchmarks", nargs="+", required=True,
                   help="the jobs' benchmark TSV files, or folders holding them (every *.tsv below, sorted)")
    p.add_argument("--jobs", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--figure", required=True)
    args = p.parse_args(argv)
    summary = write_runtime(benchmark_files(args.benchmarks), Path(args.jobs), Path(args.summary),
                            Path(args.figure))
    print(summary.to_string(index=False))
