"""The replication protocol shared by `replicate_vit.py` and `replicate_bert.py`.

LEMON's claim: a small model trained with the full recipe, expanded
losslessly and trained with a compressed learning-rate schedule, reaches the
quality of the large model trained from scratch with a fraction of the
from-scratch compute. The protocol measures that fraction in a regime like
the paper's, per task:

1. Train the small model with the recipe (linear warmup + cosine decay) for
   `S` steps. Regime check: it is near convergence (its last 20% of steps
   improve its metric by less than 10% of its total improvement).
2. Train the large model from scratch for `T` steps, once per seed: the mean
   final quality is the target `Q`. Regime check: scratch ends clearly better
   than the small model (the gap is at least 5x the seed spread).
3. The two main arms, with every seed, over the fractions `f` of `T` in
   ascending order until the mean over seeds reaches `Q`:
   - *LEMON* as the paper does it: `expand_model` with the paper's noise
     scale (`task.noise_scale`: 0.1 for post-LN BERT), a fresh AdamW and the
     recipe compressed to `f T` steps (`LemonSchedule.from_schedule`: same
     warmup and peak);
   - *LEMON + carried optimizer*: the same expansion, trained on with the
     small model's final optimizer state (`keras_lemon.expand_optimizer`;
     step count, Adam moments) and the same compressed schedule starting at
     the small model's last step (`start_step`).
4. The baselines with the first seed, at the fractions that decide the
   comparison (ascending up to the main arms' best `f`, or the largest
   fraction when neither reaches `Q`, where final qualities are compared at
   equal compute): Net2Net / bert2BERT-FPI (`method="net2net"`), zero-output
   new blocks (`method="zero_blocks"`, LLaMA-Pro's depth rule), stacking
   (`placement="stack"`) and a randomly initialized large model. Then LEMON
   with the uncompressed recipe (`f = 1`).
5. Compute saved = `1 - f_min` (every arm trains the same large model, so
   FLOPs per step are equal); including the small model's training:
   `1 - (f_min T C_large + S C_small) / (T C_large)`.

Every run's settings and curve are cached in `results/runs/<task>/*.json`,
keyed by a hash of its settings: a script that is stopped resumes where it
was (`--report-only` writes the report from what is cached, listing what is
missing). The small model's weights and optimizer state are kept in
`results/cache/` (not committed; retrained when missing). Each script writes
its section of `RESULTS.md` (between markers, so the two tasks share the
file), a PNG plot and a JSON file with every curve.

References:
    Wang et al., "LEMON: Lossless model expansion", ICLR 2024,
    arXiv:2310.07999, section 5 and figure 5 (schedule ablation).
"""

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import sys
import time

import keras
import numpy as np

import keras_lemon
from keras_lemon.callbacks import SymmetryMonitor
from keras_lemon.schedules import LemonSchedule

FRACTIONS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
QUICK_STEPS = 40
SEEDS = (0, 1)
EARLY_EVALUATIONS = (25, 50, 100, 200, 400)  # where the early dip shows
CONVERGED = 0.1  # the small model's last 20% improve it by less than this share
GAP = 5.0  # scratch must beat the small model by this many seed spreads


@dataclasses.dataclass(frozen=True)
class Arm:
    """A way of making and training the large model.

    `options`: `expand_model` options, or None for a random-init large model.
    `carry_optimizer`: train on with the small model's optimizer state.
    `main`: run with every seed and searched over fractions first.
    `expand`: False for the small model trained on, not expanded.
    """

    label: str
    options: object
    carry_optimizer: bool = False
    main: bool = False
    expand: bool = True  # False: the small model itself trains on (a reference)


def arms(task):
    paper = dict(method="lemon", noise_scale=task.noise_scale)
    return (
        Arm("LEMON", paper, main=True),
        Arm("LEMON + carried optimizer", paper, carry_optimizer=True, main=True),
        Arm("Net2Net / bert2BERT-FPI", dict(method="net2net")),
        Arm("Zero new blocks (LLaMA-Pro)", dict(method="zero_blocks")),
        Arm("Stacking", dict(paper, placement="stack")),
        Arm("Random init", None),
    )


UNCOMPRESSED = "LEMON, uncompressed schedule"
DIAGNOSTIC_NOISE = (0.1, 1.0, 4.0)  # noise scales tried besides the paper's


def diagnostics(task):
    """One seed, one fraction: LEMON with other noise scales, down and up, and
    the small model itself trained on with the same schedule (does the grown
    model get past it?)."""
    return tuple(Arm(f"LEMON, noise scale {scale:g} (diagnostic)",
                     dict(method="lemon", noise_scale=scale))
                 for scale in DIAGNOSTIC_NOISE if scale != task.noise_scale) + (
        Arm(SMALL_CONTINUED, None, expand=False),)


SMALL_CONTINUED = "Small model, not expanded, trained on (diagnostic)"


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
        # Biases and norms: LayerNorm gamma/beta, RMSNorm scale.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "scale"])
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
    drift: list = None  # [(step, mean cosine distance of copies to their originals)]

    @property
    def final(self):
        return self.curve[-1][1]

    def at(self, step):
        """The quality at the last evaluation at or before `step`."""
        return [q for s, q in self.curve if s <= step][-1]


class Task:
    """What a script supplies: models, data, evaluation and FLOP counts.

    Subclasses set `name`, `title`, `metric` (str), `higher_is_better`,
    `small`, `large` (size dicts for `build`), `expand_sizes` (for
    `expand_model`) and `recipe`, call `set_budget` (T, S, evaluations) and
    implement the methods below.
    """

    noise_scale = 1.0  # LEMON's symmetry-breaking scale as the paper's code uses it

    def set_budget(self, quick, steps, full_steps, small_steps=None):
        """T (`full_steps`, or 40 with `quick`), S and evaluations per run.

        `steps` overrides T (the `--steps` flag); S is `small_steps` (default T).
        """
        self.quick = quick
        self.steps = steps or (QUICK_STEPS if quick else full_steps)
        self.small_steps = QUICK_STEPS if quick else (small_steps or self.steps)
        self.evals = 2 if quick else 8
        return 4 if quick else 100  # warmup steps

    def settings(self):
        """Everything about the task that changes a run's result (the cache key)."""
        return dict(name=self.name, small=self.small, large=self.large,
                    expand_sizes=self.expand_sizes, recipe=dataclasses.asdict(self.recipe),
                    steps=self.steps, small_steps=self.small_steps, evals=self.evals,
                    quick=self.quick, data=self.data_settings(),
                    backend=keras.backend.backend())

    def data_settings(self):
        """What the data are (a JSON-able value): part of the cache key."""
        raise NotImplementedError

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


def evaluation_steps(steps, evals):
    """Evenly spaced evaluations, the early ones that show the dip, and 0.8 x steps
    (the convergence check)."""
    even = np.linspace(0, steps, evals + 1).round().astype(int).tolist()
    early = [s for s in EARLY_EVALUATIONS if s < steps]
    return sorted({*even, *early, round(0.8 * steps)})


def train(task, model, optimizer, steps, seed, label, fraction=None, sizes=None,
          source=None):
    """Trains `model` for `steps` steps with `optimizer`; returns a `Run`.

    With `source` (the model it was expanded from), also records how far the
    copies of its FFN units drift apart (`SymmetryMonitor.distance`).
    """
    model.compile(optimizer=optimizer, loss=task.loss())
    eval_at = set(evaluation_steps(steps, task.evals))
    batches = task.batches(seed)
    monitor = None
    if source is not None:
        monitor = SymmetryMonitor(source)
        monitor.set_model(model)
    start = time.time()
    curve = [(0, task.evaluate(model))]
    drift = [(0, monitor.distance())] if monitor else None
    for step in range(1, steps + 1):
        x, y = next(batches)
        model.train_on_batch(x, y)
        if step in eval_at:
            curve.append((step, task.evaluate(model)))
            if monitor:
                drift.append((step, monitor.distance()))
    run = Run(label, seed, fraction, steps, task.flops_per_step(sizes or task.large),
              curve, time.time() - start, drift)
    shown = f"f={fraction:g} " if fraction is not None else ""
    print(f"[{task.name}] {label} {shown}seed={seed}: {curve[0][1]:.4f} -> "
          f"{run.final:.4f} {task.metric} ({steps} steps, {run.wall_s:.0f} s)", flush=True)
    return run


def fresh_model(task, sizes, seed):
    """`task.build(sizes)` with its random initialization drawn from `seed`."""
    keras.utils.set_random_seed(seed)
    return task.build(sizes)


class RunCache:
    """One JSON file per run, named by its label and a hash of its settings."""

    def __init__(self, directory):
        self.directory = directory

    def path(self, settings):
        text = json.dumps(settings, sort_keys=True, default=str)
        key = hashlib.sha1(text.encode()).hexdigest()[:12]
        slug = re.sub(r"[^a-z0-9]+", "-", settings["label"].lower()).strip("-")
        fraction = settings.get("fraction")
        f = "" if fraction is None else f"-f{fraction:g}"
        return os.path.join(self.directory, f"{slug}{f}-s{settings['seed']}-{key}.json")

    def load(self, settings):
        path = self.path(settings)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            record = json.load(f)
        run = record["run"]
        points = {k: [tuple(p) for p in run[k]] for k in ("curve", "drift") if run.get(k)}
        return Run(**{**run, **points})

    def save(self, settings, run):
        os.makedirs(self.directory, exist_ok=True)
        path = self.path(settings)
        with open(path + ".tmp", "w") as f:
            json.dump(dict(settings=settings, run=dataclasses.asdict(run)), f, indent=1,
                      default=str)
        os.replace(path + ".tmp", path)  # a run stopped mid-write leaves no half file


class Replication:
    """The protocol for one task; `train=False` only reads the cache."""

    def __init__(self, task, out, fractions=FRACTIONS, seeds=SEEDS, train=True):
        self.task, self.fractions, self.seeds, self.train = task, tuple(fractions), tuple(seeds), train
        self.cache = RunCache(os.path.join(out, "results", "runs", task.name))
        self.artifacts = os.path.join(out, "results", "cache", task.name)
        self.missing = []  # labels of runs neither cached nor trained (report-only)
        self._small = None

    def settings(self, label, seed, fraction=None, **extra):
        return dict(task=self.task.settings(), label=label, seed=seed, fraction=fraction,
                    **extra)

    def run(self, settings, make):
        """The cached run for `settings`, or `make()`'s: `(model, optimizer, steps,
        sizes, source model or None)`."""
        cached = self.cache.load(settings)
        if cached is not None:
            shown = "" if cached.fraction is None else f" f={cached.fraction:g}"
            print(f"[{self.task.name}] {cached.label}{shown} seed={cached.seed}: "
                  f"{cached.final:.4f} (cached)", flush=True)
            return cached
        if not self.train:
            self.missing.append(f"{settings['label']} f={settings['fraction']} "
                                f"seed={settings['seed']}")
            return None
        model, optimizer, steps, sizes, source = make()
        run = train(self.task, model, optimizer, steps, settings["seed"], settings["label"],
                    settings["fraction"], sizes, source)
        self.cache.save(settings, run)
        return run

    # --- the small model --------------------------------------------------

    def small_settings(self):
        return self.settings("Small model", self.seeds[0])

    def small_run(self):
        def make():
            model = fresh_model(self.task, self.task.small, self.seeds[0])
            optimizer = self.task.recipe.optimizer(
                self.task.recipe.schedule(self.task.small_steps))
            self._small = model, optimizer
            return model, optimizer, self.task.small_steps, self.task.small, None

        run = self.run(self.small_settings(), make)
        if self._small is not None:
            self._save_small()
        return run

    def _small_files(self):
        key = os.path.basename(self.cache.path(self.small_settings()))[:-len(".json")]
        return (os.path.join(self.artifacts, key + ".weights.h5"),
                os.path.join(self.artifacts, key + ".optimizer.npz"))

    def _save_small(self):
        model, optimizer = self._small
        weights, state = self._small_files()
        os.makedirs(self.artifacts, exist_ok=True)
        model.save_weights(weights)
        np.savez(state, *[keras.ops.convert_to_numpy(v) for v in optimizer.variables])

    def small(self):
        """The trained small model and its optimizer (loaded, or trained again)."""
        if self._small is None:
            weights, state = self._small_files()
            if not (os.path.exists(weights) and os.path.exists(state)):
                os.remove(self.cache.path(self.small_settings()))  # retrain: the files are gone
                self.small_run()
                return self._small
            model = fresh_model(self.task, self.task.small, self.seeds[0])
            optimizer = self.task.recipe.optimizer(
                self.task.recipe.schedule(self.task.small_steps))
            model.compile(optimizer=optimizer, loss=self.task.loss())
            optimizer.build(model.trainable_variables)
            model.load_weights(weights)
            with np.load(state) as values:
                for i, variable in enumerate(optimizer.variables):
                    variable.assign(values[f"arr_{i}"])
            self._small = model, optimizer
        return self._small

    # --- the large model ---------------------------------------------------

    def scratch(self, seed):
        def make():
            recipe = self.task.recipe
            return (fresh_model(self.task, self.task.large, seed),
                    recipe.optimizer(recipe.schedule(self.task.steps)), self.task.steps, None,
                    None)

        return self.run(self.settings("Scratch", seed), make)

    def arm_run(self, arm, fraction, seed):
        def make():
            recipe, task = self.task.recipe, self.task
            grown = arm.options is not None or not arm.expand
            small, small_optimizer = self.small() if grown else (None, None)
            sizes = None
            if not arm.expand:
                model = fresh_model(task, task.small, seed)
                model.set_weights(small.get_weights())
                sizes, small = task.small, None
            elif arm.options is None:
                model = fresh_model(task, task.large, seed)
            else:
                model = keras_lemon.expand_model(small, seed=seed, **task.expand_sizes,
                                                 **arm.options)
            start = 0
            if arm.carry_optimizer:
                optimizer = keras_lemon.expand_optimizer(small_optimizer, small, model)
                start = int(keras.ops.convert_to_numpy(optimizer.iterations))
            schedule = LemonSchedule.from_schedule(recipe.schedule(task.steps), fraction,
                                                   start_step=start)
            if arm.carry_optimizer:
                optimizer.learning_rate = schedule
            else:
                optimizer = recipe.optimizer(schedule)
            return model, optimizer, schedule.total_steps, sizes, small

        expand = {} if arm.expand else dict(expand=False)  # keys of earlier runs unchanged
        return self.run(self.settings(arm.label, seed, fraction, options=arm.options,
                                      carry_optimizer=arm.carry_optimizer, **expand), make)

    def search(self, arm, seeds, fractions, target):
        """Ascending fractions until the mean over `seeds` reaches `target`.

        Returns `(runs, f_min)`; `f_min` is None when no fraction reached it
        (or, report-only, when a run is missing).
        """
        runs = []
        for fraction in fractions:
            batch = [self.arm_run(arm, fraction, seed) for seed in seeds]
            if any(run is None for run in batch):
                return runs, None
            runs.extend(batch)
            if reaches(self.task, float(np.mean([r.final for r in batch])), target):
                return runs, fraction
        return runs, None

    def replicate(self):
        """The whole protocol; returns a dict with every run and the summary."""
        start = time.time()
        task, seeds = self.task, self.seeds
        small_run = self.small_run()
        scratch = [self.scratch(seed) for seed in seeds]
        if small_run is None or any(run is None for run in scratch):
            return dict(task=task, small=small_run, scratch=[r for r in scratch if r],
                        incomplete=True, missing=self.missing)
        target = float(np.mean([r.final for r in scratch]))
        print(f"[{task.name}] target Q = {target:.4f} {task.metric}", flush=True)

        # The diagnostics first: cheap, and they say why the arms do what they do.
        middle = 0.5 if 0.5 in self.fractions else self.fractions[len(self.fractions) // 2]
        noise = [self.arm_run(arm, middle, seeds[0]) for arm in diagnostics(task)]
        # The main arms, fraction by fraction, so that a stopped run has
        # compared them at the same fractions.
        main = [arm for arm in arms(task) if arm.main]
        found = {arm.label: dict(label=arm.label, options=arm.options, seeds=list(seeds),
                                 f_min=None, runs=[], done=False) for arm in main}
        for fraction in self.fractions:
            for arm in main:
                method = found[arm.label]
                if method["done"]:
                    continue
                runs, f_min = self.search(arm, seeds, [fraction], target)
                method["runs"] += runs
                method["f_min"] = f_min
                method["done"] = f_min is not None or len(runs) < len(seeds)
        best = [m["f_min"] for m in found.values() if m["f_min"] is not None]
        deciding = ([f for f in self.fractions if f <= min(best)] if best
                    else list(self.fractions[-1:]))
        methods = list(found.values())
        for arm in arms(task):
            if arm.main:
                continue
            runs, f_min = self.search(arm, seeds[:1], deciding, target)
            methods.append(dict(label=arm.label, options=arm.options, seeds=list(seeds[:1]),
                                f_min=f_min, runs=runs))
        default = self.arm_run(Arm(UNCOMPRESSED, arms(task)[0].options), 1.0, seeds[0])
        return dict(task=task, small=small_run, scratch=scratch, target=target,
                    methods=methods, default=default, noise=[r for r in noise if r],
                    fractions=list(self.fractions),
                    seeds=list(seeds), wall_s=time.time() - start,
                    incomplete=bool(self.missing), missing=self.missing)


# --- Reporting --------------------------------------------------------------

def saved(task, f_min, small_run):
    """Compute saved `(without, with)` the small model's training."""
    if f_min is None:
        return None, None
    large_total = task.steps * task.flops_per_step(task.large)
    small_cost = small_run.steps * small_run.flops_per_step
    return 1.0 - f_min, 1.0 - (f_min * large_total + small_cost) / large_total


def regime_checks(task, small, scratch):
    """The two conditions of a paper-like regime, as `(text, passed)` pairs."""
    total = small.final - small.curve[0][1]
    last = small.final - small.at(round(0.8 * small.steps))
    share = last / total if total else float("inf")
    finals = [r.final for r in scratch]
    gap = (np.mean(finals) - small.final) * (1 if task.higher_is_better else -1)
    spread = max(finals) - min(finals)
    return [
        (f"small model near convergence: its last 20% of steps improved {task.metric} "
         f"by {last:+.4f}, {100 * share:.1f}% of its total improvement {total:+.4f} "
         f"(needed: < {100 * CONVERGED:.0f}%)", abs(share) < CONVERGED),
        (f"scratch beats the small model by {gap:.4f}, {gap / spread if spread else float('inf'):.1f}x "
         f"the seed spread {spread:.4f} (needed: >= {GAP:g}x)", gap >= GAP * spread),
    ]


def _fmt_quality(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {(max(values) - min(values)) / 2:.4f}"


def _pct(value, tried):
    if value is None:
        return f"not reached (f ≤ {max(tried):g})" if tried else "not run"
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


def _header(result, command):
    task = result["task"]
    wall = sum(r.wall_s for r in _all_runs(result))
    return [
        f"## {task.title}", "",
        f"Command: `{command}`  ",
        f"Written on {datetime.date.today().isoformat()}, {platform.machine()} CPU "
        f"({os.cpu_count()} cores), Keras {keras.__version__} on "
        f"{keras.backend.backend()}, keras_lemon {keras_lemon.__version__}; "
        f"seeds {list(result.get('seeds', SEEDS))}; training wall time of the runs "
        f"{wall / 3600:.2f} h (cached runs included).", "",
        *task.describe(), "",
    ]


def _all_runs(result):
    runs = [r for r in [result.get("small"), *result.get("scratch", [])] if r]
    for method in result.get("methods", []):
        runs += method["runs"]
    return runs + ([result["default"]] if result.get("default") else []) + list(
        result.get("noise", []))


def markdown(result, command, plot_name):
    task, small = result["task"], result["small"]
    lines = _header(result, command)
    if result.get("incomplete"):
        lines += ["**Incomplete**: the protocol has not run in full yet; missing runs "
                  "(in protocol order, the first decides what runs next): "
                  + "; ".join(result["missing"][:12])
                  + (" …" if len(result["missing"]) > 12 else "") + ".", ""]
    if small is None or len(result["scratch"]) < len(result.get("seeds", SEEDS)) \
            or "target" not in result:
        return lines + ["(The small model and scratch have not finished.)", ""]
    target = result["target"]
    better = "higher" if task.higher_is_better else "lower"
    scratch_finals = [r.final for r in result["scratch"]]
    checks = regime_checks(task, small, result["scratch"])
    lines += [
        f"- Small model: {small.steps} steps (S), {task.metric} {small.final:.4f} "
        f"({small.wall_s:.0f} s).",
        f"- Scratch, {task.steps} steps (= T): {task.metric} "
        f"{_fmt_quality(scratch_finals)} (mean ± half the seed spread); "
        f"target Q = {target:.4f} ({better} is better).",
        f"- One step of the large model: {task.flops_per_step(task.large) / 1e9:.2f} GFLOPs; "
        f"of the small model: {small.flops_per_step / 1e9:.2f} GFLOPs.", "",
        "Regime checks (is this like the paper's?):", "",
        *[f"- {'PASS' if ok else 'FAIL'}: {text}." for text, ok in checks], "",
        "Compute saved to reach Q = 1 − f (f: the smallest fraction of T whose "
        "compressed schedule reaches Q; fractions are tried in ascending order "
        "and stop at the first that reaches it; baselines only up to the main "
        "arms' best f, or at the largest fraction when neither reaches Q):", "",
        "| arm | seeds | fractions run | smallest f reaching Q | compute saved | "
        "saved incl. small model |",
        "|---|---|---|---|---|---|",
        *summary_rows(result), "",
        f"All runs (final {task.metric}; start = first evaluation, step 0; dip = "
        f"the worst evaluation in the first {EARLY_EVALUATIONS[-2]} steps):", "",
        "| arm | f | steps | seeds | start | dip | final | reaches Q | copy drift | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = [("Scratch", None, result["scratch"])]
    for method in result["methods"]:
        for fraction in sorted({r.fraction for r in method["runs"]}):
            groups.append((method["label"], fraction,
                           [r for r in method["runs"] if r.fraction == fraction]))
    if result.get("default"):
        groups.append((result["default"].label, 1.0, [result["default"]]))
    groups += [(r.label, r.fraction, [r]) for r in result.get("noise", [])]
    worst = min if task.higher_is_better else max
    for label, fraction, runs in groups:
        finals = [r.final for r in runs]
        dips = [worst(q for s, q in r.curve if 0 < s <= EARLY_EVALUATIONS[-2]) for r in runs]
        f = "1 (T)" if fraction is None else f"{fraction:g}"
        lines.append(
            f"| {label} | {f} | {runs[0].steps} | {','.join(str(r.seed) for r in runs)} | "
            f"{_fmt_quality([r.curve[0][1] for r in runs])} | {_fmt_quality(dips)} | "
            f"{_fmt_quality(finals)} | "
            f"{'yes' if reaches(task, float(np.mean(finals)), target) else 'no'} | "
            f"{_drift(runs)} | {sum(r.wall_s for r in runs):.0f} |")
    if result.get("default"):
        step = next((s for s, q in result["default"].curve if reaches(task, q, target)), None)
        lines += [
            "",
            "LEMON with the uncompressed schedule first reaches Q at step "
            + (f"{step} of {task.steps}." if step is not None
               else f"— (not within {task.steps} steps)."),
        ]
    lines += [
        "",
        "Copy drift: the mean cosine distance between the incoming FFN weights of "
        "each copied unit and its original at the end of the run "
        "(`keras_lemon.callbacks.SymmetryMonitor`; 0 right after the expansion). "
        "The diagnostics run at one fraction with seed 0: LEMON at other noise scales, "
        "and the small model itself trained on with the same schedule (not expanded: "
        "its steps cost the small model's FLOPs).",
        "", f"![{task.title}](results/{plot_name})", ""]
    return lines


def _drift(runs):
    ends = [r.drift[-1][1] for r in runs if r.drift and r.drift[-1][1] is not None]
    return f"{max(np.mean(ends), 0.0):.3f}" if ends else "—"  # round-off: -1e-9


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = result["task"]
    methods = result.get("methods", [])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)

    def draw(ax, run, **style):
        steps, quality = zip(*run.curve)
        ax.plot(np.array(steps) * run.flops_per_step / 1e12, quality, **style)

    for ax in axes:
        for i, run in enumerate(result["scratch"]):
            draw(ax, run, color="black", lw=2, label="Scratch" if i == 0 else None)
        if "target" in result:
            ax.axhline(result["target"], color="gray", ls=":", label="Q (scratch mean)")
        if result.get("small"):
            ax.axhline(result["small"].final, color="tab:blue", ls=":", lw=1,
                       label="small model, final")
        ax.set_xlabel("training TFLOPs of the large model")
        ax.grid(alpha=0.3)
    colors = plt.get_cmap("viridis")
    fractions = sorted({r.fraction for m in methods[:2] for r in m["runs"]})
    for method, ls in zip(methods[:2], ["-", "--"]):
        for run in method["runs"]:
            color = colors(fractions.index(run.fraction) / max(len(fractions), 2))
            first = run.seed == method["seeds"][0]
            draw(axes[0], run, color=color, ls=ls,
                 label=f"{method['label']} f={run.fraction:g}" if first else None)
    if result.get("default"):
        draw(axes[0], result["default"], color="tab:red", ls="-.", label="LEMON, f=1")
    axes[0].set_title(f"{task.title}: LEMON (—), carried optimizer (- -)")
    styles = ["tab:orange", "tab:purple", "tab:brown", "tab:gray"]
    for method, color in zip(methods[2:], styles):
        for run in method["runs"]:
            draw(axes[1], run, color=color, ls="--", alpha=0.5 + 0.5 * run.fraction,
                 label=f"{method['label']} f={run.fraction:g}")
    for method, color in zip(methods[:2], ["tab:green", "tab:olive"]):
        for run in method["runs"]:
            if run.fraction == (method["f_min"] or max(r.fraction for r in method["runs"])) \
                    and run.seed == method["seeds"][0]:
                draw(axes[1], run, color=color, lw=2,
                     label=f"{method['label']} f={run.fraction:g}")
    axes[1].set_title("Baselines, same schedules")
    axes[0].set_ylabel(task.metric)
    # Zoom on where the runs end: scratch's first steps would flatten the rest.
    finals = [r.final for r in _all_runs(result)]
    if finals:
        span = max(max(finals) - min(finals), 1e-3)
        axes[0].set_ylim(min(finals) - 0.8 * span, max(finals) + 0.3 * span)
    for ax in axes:
        ax.legend(fontsize=7, loc="lower right" if task.higher_is_better else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(result):
    def run(r):
        return dataclasses.asdict(r) if r else None

    return dict(
        task=result["task"].name, settings=result["task"].settings(),
        target=result.get("target"), seeds=result.get("seeds"),
        fractions=result.get("fractions"), incomplete=result.get("incomplete"),
        missing=result.get("missing"),
        small=run(result.get("small")), scratch=[run(r) for r in result.get("scratch", [])],
        default=run(result.get("default")),
        noise=[run(r) for r in result.get("noise", [])],
        methods=[dict(label=m["label"], options=m["options"], seeds=m["seeds"],
                      f_min=m["f_min"], runs=[run(r) for r in m["runs"]])
                 for m in result.get("methods", [])],
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
                        help="seeds of the main arms and scratch; baselines use the first "
                             "(default: 0 1)")
    parser.add_argument("--fractions", type=float, nargs="+", default=None,
                        help="fractions f of T to try, ascending "
                             "(default: 0.4 ... 0.9; 0.5 with --quick)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report from the cached runs")
    if add_arguments:
        add_arguments(parser)
    return parser.parse_args(argv)


def main(task, args, fractions):
    """Runs (or resumes) the protocol and writes RESULTS.md, the plot and the JSON."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.join(here, "quick" if args.quick else "")
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    replication = Replication(task, out, fractions=fractions, seeds=tuple(args.seeds),
                              train=not args.report_only)
    result = replication.replicate()
    plot_name = f"{task.name}.png"
    if result.get("scratch"):
        plot(result, os.path.join(out, "results", plot_name))
    with open(os.path.join(out, "results", f"{task.name}.json"), "w") as f:
        json.dump(to_json(result), f, indent=1, default=str)
    backend = keras.backend.backend()
    command = " ".join([f"KERAS_BACKEND={backend}", "python",
                        os.path.relpath(sys.argv[0], os.path.dirname(here))]
                       + [shlex.quote(a) for a in sys.argv[1:] if a != "--report-only"])
    write_section(os.path.join(out, "RESULTS.md"), task.name,
                  markdown(result, command, plot_name))
    print(f"[{task.name}] wrote {os.path.join(out, 'RESULTS.md')}"
          + (" (incomplete)" if result.get("incomplete") else ""))
    return result
