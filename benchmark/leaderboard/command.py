"""`bench leaderboard`: arguments, where the rows come from, and which renderer writes where."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.leaderboard.layout import Leaderboard, build
from benchmark.leaderboard.reported import load_reported
from benchmark.leaderboard.reproduced import load_results, newest_per_generator, results_files, row_from_results
from benchmark.leaderboard.rows import Row

# Package data (reported/*.yaml, results/*.json), so a wheel install has it too; wheels install
# unzipped, so a plain path works where importlib.resources would add nothing.
DATA_DIR = Path(__file__).resolve().parent / "data"
# The committed, rendered board; it exists only in a source checkout.
REPO_README = Path(__file__).resolve().parents[2] / "leaderboards" / "README.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="only this dataset (e.g. mvtec_ad, visa, btad, demo)")
    parser.add_argument("--segmenter", help="only this segmenter (e.g. unet, bisenetv2, segformer); leaves out "
                                            "the generation-quality tables, which do not depend on it")
    parser.add_argument("--metric", action="append", metavar="M",
                        help="only this metric, a results.json path such as pixel.ap or miou (repeatable)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write markdown to FILE (an HTML page instead if FILE ends in .html)")
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write the HTML page with bar charts")
    parser.add_argument("--readme", type=Path, nargs="?", const=REPO_README, metavar="FILE",
                        help="regenerate the committed board from all reported and accepted rows "
                             "(default FILE: leaderboards/README.md of the source checkout)")
    parser.add_argument("--dir", type=Path, default=DATA_DIR,
                        help="folder holding reported/*.yaml, quality/*.yaml and results/*.json "
                             "(default: the installed package's data)")
    parser.add_argument("--results", type=Path, action="append", default=[], metavar="PATH",
                        help="add runs: a results.json, a run folder, or a folder of run folders (repeatable); "
                             "shown beside the accepted rows")
    parser.add_argument("--no-reported", action="store_true", help="leave out the papers' reported rows")
    parser.add_argument("--wandb", metavar="PROJECT", help="also read runs from this W&B project (online only)")


def run_files(args) -> tuple[list[Path], list[Path]]:
    """The accepted runs' results files and those --results adds (an accepted file given again
    is not a second run)."""
    accepted_dir = Path(args.dir) / "results"
    accepted_files = results_files(accepted_dir) if any(accepted_dir.glob("*.json")) else []
    known = {f.resolve() for f in accepted_files}
    return accepted_files, [f for path in args.results for f in results_files(path) if f.resolve() not in known]


def load_rows(args) -> list[Row]:
    """Reported rows, accepted runs (newest per protocol and method) and added runs (newest per
    protocol and method among them), so an added run shows beside the accepted one."""
    accepted_files, added_files = run_files(args)
    accepted = newest_per_generator([row_from_results(load_results(f), str(f), accepted=True) for f in accepted_files])
    added = newest_per_generator([row_from_results(load_results(f), str(f)) for f in added_files])
    if args.wandb:
        from benchmark.leaderboard.reproduced import load_wandb

        added += load_wandb(args.wandb)
    reported = load_reported(Path(args.dir) / "reported")
    names = {r.generator: (r.label, r.kind) for r in reported}  # the papers' spelling of a method
    for row in [*accepted, *added]:
        if row.generator in names:
            label, row.kind = names[row.generator]
            row.label = row.labelled(label)
        elif row.generator == "realonly":
            row.kind = "real_only"
    return accepted + added + ([] if args.no_reported else reported)


def load_quality_rows(args) -> list:
    """IS / IC-LPIPS rows: every run (accepted or added) whose results.json holds `quality`, and
    the papers' reported ones (data/quality/*.yaml); W&B runs are not read for these."""
    from benchmark.leaderboard import quality

    accepted_files, added_files = run_files(args)
    rows = [quality.row_from_results(load_results(f), str(f)) for f in [*accepted_files, *added_files]]
    rows = [r for r in rows if r is not None]
    reported = quality.load_reported_quality(Path(args.dir) / "quality")
    names = {r.generator: r.label for r in [*load_reported(Path(args.dir) / "reported"), *reported]}
    for row in rows:  # the papers' spelling of a method
        row.label = names.get(row.generator, row.label)
    if not args.no_reported:
        rows += reported
    if args.segmenter:  # quality does not depend on the segmenter: a segmenter's view leaves it out
        return []
    return quality.select(rows, args.dataset, args.metric)


def build_board(args) -> Leaderboard:
    """The segmentation sections (filtered) and the generation-quality rows."""
    board = build(load_rows(args), args.dataset, args.segmenter, args.metric)
    board.quality = load_quality_rows(args)
    return board


def readme_text(board: Leaderboard, readme: Path) -> str:
    """The committed board: a pure function of the data, so re-running it changes nothing."""
    from benchmark.leaderboard.render import DATA_PATHS, render_markdown

    preamble = (f"Generated by `bench leaderboard --readme` from `{DATA_PATHS}/reported/*.yaml` and "
                f"`{DATA_PATHS}/quality/*.yaml` (numbers the papers published) and `{DATA_PATHS}/results/` "
                "(accepted runs); do not edit by hand.")
    return render_markdown(board, link_dir=Path(readme).parent, preamble=preamble)


def write_if_changed(path: Path, text: str) -> bool:
    """Write atomically (a unique temporary name beside it, then rename) unless nothing changed."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, path.stat().st_mode if path.exists() else 0o644)  # mkstemp files are 0600
    Path(tmp.name).replace(path)
    return True


def run(args) -> int:
    from benchmark.leaderboard.render import print_rich, render_html, render_markdown

    if args.readme and (args.dataset or args.segmenter or args.metric or args.no_reported or args.results or args.wandb):
        raise BenchError("--readme renders the whole committed leaderboard; drop the filters and extra sources")
    if args.readme and not args.readme.parent.is_dir():
        raise BenchError(f"--readme: no folder {args.readme.parent} (the default is leaderboards/README.md of a "
                         "source checkout); give the file to write, e.g. --readme board.md")
    board = build_board(args)
    if not board.sections and not board.quality:
        raise BenchError("no leaderboard rows match the filters "
                         f"(dataset={args.dataset}, segmenter={args.segmenter}, metric={args.metric})")
    if args.readme:
        changed = write_if_changed(args.readme, readme_text(board, args.readme))
        print(f"{args.readme}: {'updated' if changed else 'unchanged'}")
        return 0
    written = False
    for target, as_html in ((args.out, args.out and args.out.suffix == ".html"), (args.html, True)):
        if target:
            text = render_html(board, target.parent) if as_html else render_markdown(board, target.parent)
            write_if_changed(target, text)
            print(f"wrote {target}")
            written = True
    if not written:
        print_rich(board)
    return 0
