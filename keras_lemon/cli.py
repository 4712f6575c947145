"""`keras-lemon`: expand and inspect keras-hub presets from the command line.

    keras-lemon expand SRC DST --hidden 768 --layers 12 [--heads N]
        [--intermediate N] [--placement interleave|stack] [--positions I,J,...]
        [--method lemon|net2net|zero_blocks] [--seed N] [--noise-scale X]
        [--dry-run] [--overwrite]
    keras-lemon inspect SRC

SRC is a preset directory (Keras, or Hugging Face format) or, with internet,
a keras-hub preset name. The Keras backend comes from `KERAS_BACKEND`, as
everywhere in Keras. Exit codes: 0 success, 2 bad arguments (one line on
stderr; nothing written), 1 an expansion that is not lossless (nothing
written).
"""

import argparse
import sys
import time

from rich.console import Console
from rich.progress import BarColumn
from rich.progress import MofNCompleteColumn
from rich.progress import Progress
from rich.progress import TextColumn

from keras_lemon.expand import METHODS
from keras_lemon.expand import expansion_plan
from keras_lemon.expand import check_noise_scale
from keras_lemon.options import expansion_options
from keras_lemon.presets import LoadedPreset
from keras_lemon.presets import check_destination
from keras_lemon.presets import write_expanded_preset
from keras_lemon.rules.registry import ExpansionError

PROG = "keras-lemon"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser():
    parser = _Parser(prog=PROG, description=(
        "Lossless model expansion (LEMON) of keras-hub presets. The backend is "
        "KERAS_BACKEND's (tensorflow, jax or torch)."))
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    expand = commands.add_parser(
        "expand", help="write a larger preset whose outputs equal SRC's",
        description="Expand the preset SRC and write the larger preset DST.")
    expand.add_argument("src", metavar="SRC", help="preset directory (Keras or Hugging Face format)")
    expand.add_argument("dst", metavar="DST", help="directory to write the expanded preset to")
    expand.add_argument("--hidden", type=_positive_int, help="target hidden size")
    expand.add_argument("--layers", type=_positive_int, help="target number of blocks")
    expand.add_argument("--heads", type=_positive_int,
                        help="target number of heads (default: keep the head size)")
    expand.add_argument("--intermediate", type=_positive_int,
                        help="target FFN width (default: keep intermediate / hidden)")
    expand.add_argument("--placement", choices=("interleave", "stack"), default="interleave",
                        help="where new blocks go (default: interleave)")
    expand.add_argument("--positions", type=_positions,
                        help="comma-separated source block indices: a new block right after "
                             "each (LLaMA-Pro style; overrides --placement)")
    expand.add_argument("--method", choices=METHODS, default="lemon",
                        help="lemon (default), or the baselines net2net and zero_blocks")
    expand.add_argument("--seed", type=int, help="seed of LEMON's random draws (default: random)")
    expand.add_argument("--noise-scale", type=float, default=1.0,
                        help="size of LEMON's symmetry-breaking draws relative to the default "
                             "(default: 1.0; 0: equal shares, zero new blocks)")
    expand.add_argument("--dry-run", action="store_true",
                        help="print the expansion plan only; write nothing")
    expand.add_argument("--overwrite", action="store_true",
                        help="replace DST if it exists (only after success)")
    expand.add_argument("--inexact", action="store_true",
                        help="allow a post-LN width that is not a multiple: the best "
                             "approximation, its error measured and reported, never lossless")

    inspect = commands.add_parser(
        "inspect", help="print a preset's family, sizes and possible expansions",
        description="Print a preset's model family, sizes, LayerNorm placement "
                    "and the expansions keras_lemon can do on it.")
    inspect.add_argument("src", metavar="SRC", help="preset directory (Keras or Hugging Face format)")
    return parser


class _ProgressBar:
    """A progress bar on stderr for the transplant (rich, which Keras depends on)."""

    def __init__(self):
        self._progress = Progress(
            TextColumn("transplanting"), BarColumn(), MofNCompleteColumn(),
            TextColumn("variables  {task.description}"), console=Console(stderr=True),
        )
        self._task = None

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def __call__(self, done, total, path):
        if self._task is None:
            self._task = self._progress.add_task(path, total=total)
        self._progress.update(self._task, completed=done, total=total, description=path)


def _describe_preset(loaded):
    parts = [f"{loaded.preset} ({loaded.format} format)"]
    extras = [type(layer).__name__ for layer in loaded.preprocessing.values()]
    preprocessor = getattr(loaded.model, "preprocessor", None)
    if preprocessor is not None:
        extras.insert(0, type(preprocessor).__name__)
    if extras:
        parts.append("with " + ", ".join(extras))
    return " ".join(parts)


def _positions(text):
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated block indices such as 3,7,11; got {text!r}") from None


def _expand(args):
    check_destination(args.src, args.dst, args.overwrite)
    check_noise_scale(args.noise_scale, args.method)
    sizes = dict(hidden=args.hidden, layers=args.layers, heads=args.heads,
                 intermediate=args.intermediate, placement=args.placement, method=args.method,
                 positions=args.positions)
    start = time.perf_counter()
    loaded = LoadedPreset(args.src, load_weights=not args.dry_run)
    print(f"source: {_describe_preset(loaded)}")
    plan = expansion_plan(loaded.model, exact=not args.inexact, **sizes)
    print(plan)
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    with _ProgressBar() as progress:
        _, record = write_expanded_preset(loaded, args.dst, seed=args.seed,
                                          noise_scale=args.noise_scale,
                                          overwrite=args.overwrite, progress=progress,
                                          exact=not args.inexact, **sizes)
    if record["exact"]:
        print(f"lossless check: max |diff| / max |output| = {record['lossless_error']:.2e} "
              f"(tolerance {record['tolerance']:g} for {record['compute_dtype']}) on "
              f"{record['probe']}, "
              f"preset reloaded on {record['backend']}")
    else:
        print(f"NOT lossless (--inexact): approximation error max |diff| / max |output| = "
              f"{record['approximation_error']:.2e} on {record['probe']}, preset reloaded "
              f"on {record['backend']}")
    print(f"wrote {args.dst} ({record['model_class']}, seed {record['seed']}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _inspect(args):
    loaded = LoadedPreset(args.src, load_weights=False)
    print(f"preset: {_describe_preset(loaded)}")
    print(expansion_options(loaded.model))
    return 0


def main(argv=None):
    """Runs the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return {"expand": _expand, "inspect": _inspect}[args.command](args)
    except ExpansionError as error:  # a valid request that is not exact: not an argument error
        print(f"{PROG}: expansion failed: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as error:
        message = " ".join(str(error).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
