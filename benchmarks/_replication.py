"""The replication protocol shared by `replicate_vit.py` and `replicate_bert.py`.

LEMON's claim: a small trained model, expanded losslessly and trained with a
compressed learning-rate schedule, reaches the quality of the large model
trained from scratch with a fraction of the from-scratch compute. The protocol
measures that fraction, per task:

1. Train the small model with the recipe (linear warmup + cosine decay).
2. Train the large model from scratch for `T` steps, once per seed: the mean
   final quality is the target `Q`.
3. Expand the small model (LEMON) and train with `LemonSchedule` compressed
   to `f * T` steps, for each `f` in ascending order, until the mean over
   seeds reaches `Q`. Also LEMON with the uncompressed recipe (`f = 1`).
4. The baselines run with one seed: Net2Net / bert2BERT-FPI
   (`method="net2net"`), zero-output new blocks (`method="zero_blocks"`,
   LLaMA-Pro's depth rule), stacking (`placement="stack"`) and a randomly
   initialized large model. To fit the hour, they run only the fractions
   that decide the comparison: ascending up to LEMON's `f_min` (stopping when
   they reach `Q`), or, when LEMON does not reach `Q`, the largest fraction,
   where final qualities are compared at equal compute.
5. A diagnostic outside the protocol: LEMON at the middle fraction with a
   quarter of the recipe's peak learning rate, to tell whether restarting at
   the full peak costs the small model's head start.
6. Compute saved = `1 - f_min` (every method trains the same large model, so
   FLOPs per step are equal); including the small model's training:
   `1 - (f_min T C_large + S C_small) / (T C_large)`.

Each script writes its section of `RESULTS.md` (between markers, so the two
tasks share the file), a PNG plot and a JSON file with every curve.

References:
    Wang et al., "LEMON: Lossless model expansion", ICLR 2024,
    arXiv:2310.07999, section 5 and figure 5 (schedule ablation).
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time

import keras
import numpy as np

import keras_lemon
from keras_lemon.schedules import LemonSchedule

FRACTIONS = (0.3, 0.5, 0.8)
QUICK_STEPS = 40
SEEDS = (0, 1)
BASELINES = (
    # label, expand_model options (None: random init of the large model)
    ("Net2Net / bert2BERT-FPI", dict(method="net2net")),
    ("Zero new blocks (LLaMA-Pro)", dict(method="zero_blocks")),
    ("Stacking", dict(method="lemon", placement="stack")),
    ("Random init", None),
)
LEMON = ("LEMON", dict(method="lemon"))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The from-scratch recipe: AdamW, linear warmup from 0, cosine to `alpha * peak`."""

    peak_learning_rate: float
    warmup_steps: int
    alpha: float
    weight_decay: float
    batch_size: int

    def schedule(self, total_steps):
        return keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - self.warmup_steps, alpha=self.alpha,
            warmup_target=self.peak_learning_rate, warmup_steps=self.warmup_steps)

    def optimizer(self, schedule):
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=self.weight_decay,
                                           clipnorm=1.0)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return optimizer


@dataclasses.dataclass
class Run:
    """One training run and its evaluation curve."""

    label: str
    seed: int
    fraction: object  # float, or None for the small model and scratch
    steps: int
    flops_per_step: float
    curve: list  # [(step, quality)]
    wall_s: float

    @property
    def final(self):
        return self.curve[-1][1]


class Task:
    """What a script supplies: models, data, evaluation and FLOP counts.

    Subclasses set `name`, `title`, `metric` (str), `higher_is_better`,
    `small`, `large` (size dicts for `build`), `expand_sizes` (for
    `expand_model`) and `recipe`, call `set_budget` (T, S, evaluations) and
    implement the methods below.
    """

    def set_budget(self, quick, steps, full_steps):
        """T and S (`full_steps`, or 40 with `quick`), and evaluations per run.

        `steps` overrides T (the `--steps` flag).
        """
        self.steps = steps or (QUICK_STEPS if quick else full_steps)
        self.small_steps = QUICK_STEPS if quick else full_steps
        self.evals = 2 if quick else 6
        return 4 if quick else 100  # warmup steps

    def build(self, sizes):
        """A new, uncompiled model of `sizes` (seeded by `fresh_model`)."""
        raise NotImplementedError

    def loss(self):
        raise NotImplementedError

    def batches(self, seed):
        """An endless iterator of training batches `(x, y)`."""
        raise NotImplementedError

    def evaluate(self, model):
        """The quality on the held-out set (a float)."""
        raise NotImplementedError

    def flops_per_step(self, sizes):
        """Training FLOPs of one step (forward + backward = 3x forward)."""
        raise NotImplementedError

    def describe(self):
        """Markdown lines on data and models."""
        raise NotImplementedError


def encoder_forward_flops(tokens, hidden, layers, intermediate, seq_len):
    """Forward FLOPs of `layers` transformer blocks over `tokens` tokens.

    Per token and block: Q, K, V, output (4 h^2 MACs), FFN (2 h i MACs) and the
    attention scores and mix (2 s h MACs); 2 FLOPs per multiply-accumulate.
    """
    macs = layers * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * seq_len * hidden)
    return 2.0 * tokens * macs


def reaches(task, quality, target):
    return quality >= target if task.higher_is_better else quality <= target


def train(task, model, schedule, steps, seed, label, fraction=None, sizes=None):
    """Trains `model` for `steps` steps with `schedule`; returns a `Run`."""
    model.compile(optimizer=task.recipe.optimizer(schedule), loss=task.loss())
    eval_at = set(np.linspace(0, steps, task.evals + 1).round().astype(int).tolist())
    batches = task.batches(seed)
    start = time.time()
    curve = [(0, task.evaluate(model))]
    for step in range(1, steps + 1):
        x, y = next(batches)
        model.train_on_batch(x, y)
        if step in eval_at:
            curve.append((step, task.evaluate(model)))
    run = Run(label, seed, fraction, steps, task.flops_per_step(sizes or task.large),
              curve, time.time() - start)
    shown = f"f={fraction:g} " if fraction is not None else ""
    print(f"[{task.name}] {label} {shown}seed={seed}: {curve[0][1]:.4f} -> "
          f"{run.final:.4f} {task.metric} ({steps} steps, {run.wall_s:.0f} s)", flush=True)
    return run


def fresh_model(task, sizes, seed):
    """`task.build(sizes)` with its random initialization drawn from `seed`."""
    keras.utils.set_random_seed(seed)
    return task.build(sizes)


def _large_model(task, small, options, seed):
    """The large model: `small` expanded with `options`, or random init (None)."""
    if options is None:
        return fresh_model(task, task.large, seed)
    return keras_lemon.expand_model(small, seed=seed, **task.expand_sizes, **options)


def search_fraction(task, small, label, options, seeds, fractions, target,
                    recipe_schedule=None):
    """Runs ascending fractions until the mean final quality reaches `target`.

    Returns `(runs, f_min)` with `f_min` None when no fraction reached it.
    """
    runs = []
    recipe_schedule = recipe_schedule or task.recipe.schedule(task.steps)
    for fraction in fractions:
        schedule = LemonSchedule.from_schedule(recipe_schedule, fraction)
        batch = [train(task, _large_model(task, small, options, seed), schedule,
                       schedule.total_steps, seed, label, fraction) for seed in seeds]
        runs.extend(batch)
        if reaches(task, float(np.mean([r.final for r in batch])), target):
            return runs, fraction
    return runs, None


def first_step_reaching(task, run, target):
    return next((step for step, q in run.curve if reaches(task, q, target)), None)


def replicate(task, fractions=FRACTIONS, seeds=SEEDS, baselines=BASELINES):
    """The whole protocol; returns a dict with every run and the summary."""
    start = time.time()
    small = fresh_model(task, task.small, seeds[0])
    small_run = train(task, small, task.recipe.schedule(task.small_steps),
                      task.small_steps, seeds[0], "Small model", sizes=task.small)

    scratch = [train(task, _large_model(task, small, None, seed),
                     task.recipe.schedule(task.steps), task.steps, seed, "Scratch")
               for seed in seeds]
    target = float(np.mean([r.final for r in scratch]))
    print(f"[{task.name}] target Q = {target:.4f} {task.metric}", flush=True)

    runs, f_min = search_fraction(task, small, LEMON[0], LEMON[1], seeds, fractions, target)
    methods = [dict(label=LEMON[0], options=LEMON[1], seeds=list(seeds), f_min=f_min,
                    runs=runs)]
    baseline_fractions = ([f for f in fractions if f <= f_min] if f_min is not None
                          else list(fractions[-1:]))
    for label, options in baselines:
        runs, f_min = search_fraction(task, small, label, options, seeds[:1],
                                      baseline_fractions, target)
        methods.append(dict(label=label, options=options, seeds=list(seeds[:1]),
                            f_min=f_min, runs=runs))

    default = train(task, _large_model(task, small, LEMON[1], seeds[0]),
                    task.recipe.schedule(task.steps), task.steps, seeds[0],
                    "LEMON, uncompressed schedule", fraction=1.0)
    low_peak = dataclasses.replace(
        task.recipe, peak_learning_rate=task.recipe.peak_learning_rate / 4)
    fraction = fractions[len(fractions) // 2]
    diagnostic, _ = search_fraction(
        task, small, "LEMON, peak LR / 4 (diagnostic)", LEMON[1], seeds[:1], [fraction],
        target, recipe_schedule=low_peak.schedule(task.steps))
    return dict(task=task, small=small_run, scratch=scratch, target=target,
                methods=methods, default=default, diagnostic=diagnostic[0],
                fractions=list(fractions), seeds=list(seeds),
                wall_s=time.time() - start)


# --- Reporting --------------------------------------------------------------

def saved(task, f_min, small_run):
    """Compute saved `(without, with)` the small model's training."""
    if f_min is None:
        return None, None
    large_total = task.steps * task.flops_per_step(task.large)
    small_cost = small_run.steps * small_run.flops_per_step
    return 1.0 - f_min, 1.0 - (f_min * large_total + small_cost) / large_total


def _fmt_quality(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {(max(values) - min(values)) / 2:.4f}"


def _pct(value, tried):
    if value is None:
        return f"not reached (f ≤ {max(tried):g})"
    return f"**{100 * value:.1f}%**"


def summary_rows(result):
    task, small = result["task"], result["small"]
    rows = []
    for method in result["methods"]:
        without, with_small = saved(task, method["f_min"], small)
        f = "—" if method["f_min"] is None else f"{method['f_min']:g}"
        tried = sorted({r.fraction for r in method["runs"]})
        rows.append(f"| {method['label']} | {len(method['seeds'])} | "
                    f"{', '.join(f'{x:g}' for x in tried)} | {f} | "
                    f"{_pct(without, tried)} | {_pct(with_small, tried)} |")
    return rows


def markdown(result, command, plot_name):
    task = result["task"]
    target, small = result["target"], result["small"]
    better = "higher" if task.higher_is_better else "lower"
    scratch_finals = [r.final for r in result["scratch"]]
    lines = [
        f"## {task.title}", "",
        f"Command: `{command}`  ",
        f"Run on {datetime.date.today().isoformat()}, {platform.machine()} CPU "
        f"({os.cpu_count()} cores), Keras {keras.__version__} on "
        f"{keras.backend.backend()}, keras_lemon {keras_lemon.__version__}; "
        f"seeds {result['seeds']}; total wall time {result['wall_s'] / 60:.1f} min.", "",
        *task.describe(), "",
        f"- Small model: {small.steps} steps, {task.metric} {small.final:.4f} "
        f"({small.wall_s:.0f} s).",
        f"- Scratch, {task.steps} steps (= T): {task.metric} "
        f"{_fmt_quality(scratch_finals)} (mean ± half the seed spread); "
        f"target Q = {target:.4f} ({better} is better).",
        f"- One step of the large model: {task.flops_per_step(task.large) / 1e9:.2f} GFLOPs; "
        f"of the small model: {small.flops_per_step / 1e9:.2f} GFLOPs.", "",
        "Compute saved to reach Q = 1 − f (f: the smallest fraction of T whose "
        "compressed schedule reaches Q; fractions are tried in ascending order "
        "and stop at the first that reaches it; baselines only up to LEMON's f, "
        "or at the largest fraction when LEMON does not reach Q):", "",
        "| method | seeds | fractions run | smallest f reaching Q | compute saved | "
        "saved incl. small model |",
        "|---|---|---|---|---|---|",
        *summary_rows(result), "",
        f"All runs (final {task.metric}; start = first evaluation, step 0):", "",
        "| method | f | steps | seeds | start | final | reaches Q | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = [("Scratch", None, result["scratch"])]
    for method in result["methods"]:
        for fraction in sorted({r.fraction for r in method["runs"]}):
            groups.append((method["label"], fraction,
                           [r for r in method["runs"] if r.fraction == fraction]))
    groups.append((result["default"].label, 1.0, [result["default"]]))
    groups.append((result["diagnostic"].label, result["diagnostic"].fraction,
                   [result["diagnostic"]]))
    for label, fraction, runs in groups:
        finals = [r.final for r in runs]
        f = "1 (T)" if fraction is None else f"{fraction:g}"
        lines.append(
            f"| {label} | {f} | {runs[0].steps} | {','.join(str(r.seed) for r in runs)} | "
            f"{_fmt_quality([r.curve[0][1] for r in runs])} | {_fmt_quality(finals)} | "
            f"{'yes' if reaches(task, float(np.mean(finals)), target) else 'no'} | "
            f"{sum(r.wall_s for r in runs):.0f} |")
    step = first_step_reaching(task, result["default"], target)
    lines += [
        "",
        "LEMON with the uncompressed schedule first reaches Q at step "
        + (f"{step} of {task.steps} (evaluated every {task.steps // task.evals} steps)."
           if step is not None else f"— (not within {task.steps} steps)."),
        "",
        f"![{task.title}](results/{plot_name})", "",
    ]
    return lines


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = result["task"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)

    def draw(ax, run, **style):
        steps, quality = zip(*run.curve)
        ax.plot(np.array(steps) * run.flops_per_step / 1e12, quality, **style)

    colors = plt.get_cmap("viridis")
    for ax in axes:
        for i, run in enumerate(result["scratch"]):
            draw(ax, run, color="black", lw=2, label="Scratch" if i == 0 else None)
        ax.axhline(result["target"], color="gray", ls=":", label="Q (scratch mean)")
        ax.set_xlabel("training TFLOPs of the large model")
        ax.grid(alpha=0.3)
    lemon = result["methods"][0]
    fractions = sorted({r.fraction for r in lemon["runs"]})
    for run in lemon["runs"]:
        color = colors(fractions.index(run.fraction) / max(len(fractions), 2))
        first = run.seed == lemon["seeds"][0]
        draw(axes[0], run, color=color, label=f"LEMON f={run.fraction:g}" if first else None)
    draw(axes[0], result["default"], color="tab:red", ls="--", label="LEMON, f=1")
    diagnostic = result["diagnostic"]
    draw(axes[0], diagnostic, color="tab:pink", ls="-.",
         label=f"LEMON f={diagnostic.fraction:g}, peak / 4")
    axes[0].set_title(f"{task.title}: LEMON, compressed schedules")
    styles = ["tab:orange", "tab:purple", "tab:brown", "tab:gray"]
    for method, color in zip(result["methods"][1:], styles):
        for run in method["runs"]:
            draw(axes[1], run, color=color, ls="--", alpha=0.5 + 0.5 * run.fraction,
                 label=f"{method['label']} f={run.fraction:g}")
    for run in lemon["runs"]:
        if run.fraction == (lemon["f_min"] or fractions[-1]) and run.seed == lemon["seeds"][0]:
            draw(axes[1], run, color="tab:green", lw=2, label=f"LEMON f={run.fraction:g}")
    axes[1].set_title("Baselines, same schedules")
    axes[0].set_ylabel(task.metric)
    # Zoom on where the runs end: scratch's first steps would flatten the rest.
    finals = [result["small"].final, result["target"]] + [
        r.final for m in result["methods"] for r in m["runs"]] + [
        result["default"].final, result["diagnostic"].final]
    span = max(max(finals) - min(finals), 1e-3)
    axes[0].set_ylim(min(finals) - 0.6 * span, max(finals) + 0.3 * span)
    for ax in axes:
        ax.legend(fontsize=7, loc="lower right" if task.higher_is_better else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(result):
    def run(r):
        return dataclasses.asdict(r)

    return dict(
        task=result["task"].name, target=result["target"], seeds=result["seeds"],
        fractions=result["fractions"], wall_s=result["wall_s"],
        small=run(result["small"]), scratch=[run(r) for r in result["scratch"]],
        default=run(result["default"]), diagnostic=run(result["diagnostic"]),
        methods=[dict(label=m["label"], options=m["options"], seeds=m["seeds"],
                      f_min=m["f_min"], runs=[run(r) for r in m["runs"]])
                 for m in result["methods"]],
    )


def write_section(results_md, name, lines):
    """Replaces this task's section of `results_md` (between its markers)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = (open(results_md).read() if os.path.exists(results_md) else
            "# Replicating LEMON's training-compute savings in miniature\n\n"
            "Written by `benchmarks/replicate_vit.py` and "
            "`benchmarks/replicate_bert.py`; see `benchmarks/README.md`.\n\n")
    section = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(results_md, "w") as f:
        f.write(text)


def parse_args(description, argv=None, add_arguments=None):
    """The scripts' common flags; `add_arguments(parser)` adds a script's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and steps: a smoke run (< 5 min)")
    parser.add_argument("--out", default=None,
                        help="directory for RESULTS.md and results/ (default: benchmarks/ "
                             "for a full run, benchmarks/quick/ with --quick)")
    parser.add_argument("--steps", type=int, help="override T, the scratch budget")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="seeds of LEMON and scratch; baselines use the first "
                             "(default: 0 1)")
    parser.add_argument("--fractions", type=float, nargs="+", default=None,
                        help="fractions f of T to try, ascending "
                             "(default: 0.3 0.5 0.8; 0.5 with --quick)")
    if add_arguments:
        add_arguments(parser)
    return parser.parse_args(argv)


def main(task, args, fractions):
    """Runs `replicate` and writes RESULTS.md, the plot and the JSON."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.join(here, "quick" if args.quick else "")
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    result = replicate(task, fractions=fractions, seeds=tuple(args.seeds))
    plot_name = f"{task.name}.png"
    plot(result, os.path.join(out, "results", plot_name))
    with open(os.path.join(out, "results", f"{task.name}.json"), "w") as f:
        json.dump(to_json(result), f, indent=1)
    backend = keras.backend.backend()
    command = " ".join([f"KERAS_BACKEND={backend}", "python",
                        os.path.relpath(sys.argv[0], os.path.dirname(here))]
                       + [shlex.quote(a) for a in sys.argv[1:]])
    write_section(os.path.join(out, "RESULTS.md"), task.name,
                  markdown(result, command, plot_name))
    print(f"[{task.name}] wrote {os.path.join(out, 'RESULTS.md')} "
          f"({result['wall_s'] / 60:.1f} min)")
    return result
