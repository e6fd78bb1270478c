"""Command line: `python -m benchmarks run <study|all> [options]`, `python -m benchmarks table`.

    python -m benchmarks list
    python -m benchmarks run lorenz96 --optimizers rd,adam --seeds 3 --budget 10
    python -m benchmarks run all --quick --out /tmp/bench
    python -m benchmarks run mnist --budget 2 --batch-sizes 32,128,256   # the race's grid
    python -m benchmarks table            # regenerates docs/benchmarks.md from the JSON
    python -m benchmarks table --results benchmarks/results/cpu --doc docs/benchmarks.md

`table` replaces what lies between `<!-- results:start -->` and
`<!-- results:end -->` in the doc (appending both markers if absent) with one
section per study (markdown tables and an image), and copies each study's PNG
into `--assets` (default: `assets/benchmarks/` next to the doc), so that the
page's image links stay inside a MkDocs `docs_dir`. A PNG missing next to its
JSON is drawn from the JSON; `--plots` redraws all of them.
"""

from __future__ import annotations

import os

# One OpenBLAS thread, set before numpy and jaxlib load it: jaxlib's LAPACK
# kernels (Cholesky, triangular solves, eigh) run on OpenBLAS's own thread
# pool, which competes with XLA's intra-op threads for the same cores. On this
# 2-core CPU that made a 1280 × 1280 Cholesky inside the RD step 2-3x slower
# (median). Set OPENBLAS_NUM_THREADS yourself to measure another setting; the
# value is recorded in every result (`machine.openblas_num_threads`).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from benchmarks import registry
from benchmarks import report
from benchmarks import runner
from rdescent.datasets import DatasetError

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="list the studies")
  run = sub.add_parser("run", help="run a study (or all) and write JSON + PNG")
  run.add_argument("study", help="a study name from `list`, or `all`")
  run.add_argument(
    "--optimizers", default=None, help="comma-separated families (rd,adam,sgd) or exact labels"
  )
  run.add_argument("--seeds", type=int, default=None, help="number of seeds (default: study's)")
  run.add_argument(
    "--budget", type=float, default=None, help="seconds of training per run (default: study's)"
  )
  run.add_argument("--quick", action="store_true", help="tiny sizes, for CI (seconds)")
  run.add_argument(
    "--batch-sizes",
    default=None,
    help="comma-separated batch sizes that every optimizer of a race runs at, each family "
    "taking its best (default: 32,128,256; with --quick 32,128)",
  )
  run.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help=f"results directory (default {runner.RESULTS_DIR})",
  )
  run.add_argument("--no-progress", action="store_true", help="no progress bars")
  run.add_argument(
    "--dsgnar",
    default=None,
    help="path of a DSGNAR checkout, the PINN suite's peer (default: $RDESCENT_DSGNAR_PATH)",
  )
  table = sub.add_parser("table", help="regenerate the results section of docs/benchmarks.md")
  table.add_argument("--results", type=pathlib.Path, default=runner.RESULTS_DIR)
  table.add_argument("--doc", type=pathlib.Path, default=DOCS)
  table.add_argument("--studies", default=None, help="comma-separated (default: all JSON found)")
  table.add_argument(
    "--plots",
    action="store_true",
    help="also redraw each study's PNG (next to its JSON) from the JSON",
  )
  table.add_argument(
    "--assets",
    type=pathlib.Path,
    default=None,
    help="folder the PNGs are copied to and linked from "
    "(default: assets/benchmarks/ next to --doc)",
  )
  table.add_argument(
    "--no-assets",
    action="store_true",
    help="link each PNG where it lies, next to its JSON (no copy)",
  )
  return parser


def _batch_sizes(text: str | None) -> list[int] | None:
  """`--batch-sizes 32,128,256` as integers (None when not given)."""
  if not text:
    return None
  try:
    sizes = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    raise SystemExit(f"--batch-sizes: expected comma-separated integers, got {text!r}") from None
  if not sizes or min(sizes) < 1:
    raise SystemExit(f"--batch-sizes: expected positive integers, got {text!r}")
  return sizes


def run_studies(args) -> int:
  studies = registry.load_all()
  if args.study == "all":
    names = [name for name, study in studies.items() if study.in_all]
  elif args.study in studies:
    names = [args.study]
  else:
    print(f"unknown study {args.study!r}; known: {', '.join(studies)} or 'all'", file=sys.stderr)
    return 2
  if args.out is None and args.quick:
    print("--quick results do not belong in the repository: pass --out DIR", file=sys.stderr)
    return 2
  options = runner.StudyOptions(
    optimizers=args.optimizers.split(",") if args.optimizers else None,
    seeds=args.seeds,
    budget=args.budget,
    quick=args.quick,
    out_dir=args.out or runner.RESULTS_DIR,
    progress=not args.no_progress,
    command=runner.command_line(),
    batch_sizes=_batch_sizes(args.batch_sizes),
    dsgnar=args.dsgnar,
  )
  for name in names:
    start = time.perf_counter()
    try:
      result = studies[name].run(options)
    except DatasetError as error:
      print(f"{name}: cannot load its data: {error}", file=sys.stderr)
      return 1
    path = runner.save(result, options.out_dir)
    plot = report.plot_study(result, options.out_dir / f"{name}.png")
    report.print_summary(result)
    print(f"{name}: {time.perf_counter() - start:.1f} s; wrote {path} and {plot}")
  return 0


def write_table(args) -> int:
  paths = sorted(args.results.glob("*.json"))
  order = {name: i for i, name in enumerate(registry.load_all())}
  # Runner studies only (they carry a "kind"); e.g. gram_speed.json has its own table.
  results = [r for r in (runner.load(p) for p in paths) if "kind" in r]
  if args.studies:
    keep = args.studies.split(",")
    results = [r for r in results if r["study"] in keep]
  results.sort(key=lambda r: order.get(r["study"], len(order)))
  if not results:
    print(f"no results JSON under {args.results}", file=sys.stderr)
    return 1
  for result in results:
    png = args.results / f"{result['study']}.png"
    if args.plots or not png.exists():
      report.plot_study(result, png)
  assets = (
    args.results
    if args.no_assets
    else (args.assets if args.assets is not None else args.doc.parent / "assets" / "benchmarks")
  )
  if not args.no_assets:
    assets.mkdir(parents=True, exist_ok=True)
    for result in results:
      shutil.copyfile(args.results / f"{result['study']}.png", assets / f"{result['study']}.png")
  prefix = pathlib.Path(os.path.relpath(assets.resolve(), args.doc.resolve().parent)).as_posix()
  body = "\n".join(report.study_section(r, plot_prefix=f"{prefix}/") for r in results)
  generated = (
    f"{START}\n<!-- generated by `python -m benchmarks table`; do not edit -->\n\n{body}\n{END}"
  )
  text = args.doc.read_text() if args.doc.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
  if START in text and END in text:
    head, rest = text.split(START, 1)
    text = head + generated + rest.split(END, 1)[1]
  else:
    text = text.rstrip() + "\n\n" + generated + "\n"
  args.doc.parent.mkdir(parents=True, exist_ok=True)
  args.doc.write_text(text)
  print(
    f"wrote {len(results)} studies to {args.doc}"
    + ("" if args.no_assets else f"; PNGs copied to {assets}")
  )
  return 0


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.command == "list":
    for name, study in registry.load_all().items():
      print(f"{name:12s} {study.description}")
    return 0
  if args.command == "run":
    return run_studies(args)
  return write_table(args)


if __name__ == "__main__":
  sys.exit(main())
