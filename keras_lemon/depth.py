"""Depth growth: where new blocks go and how they are initialized.

LEMON inserts new blocks so that the network's function is unchanged:

- **pre-LN** (ViT, GPT-2): a new block is a width-expanded copy of a source
  block whose two output projections *cancel* (their weights' copies sum to
  zero), so the block adds exactly 0 to the residual stream.
- **post-LN** (BERT): `x_{i+1} = LN2_i(...)`. A chain "source block i, then
  new blocks" sets every LN2 but the chain's last to identity and every new
  block's LN1 to identity; the last block carries block i's LN2. Since
  `LN(LN(z)) = LN(z)` up to epsilon, this is exact to `O(epsilon / var)`
  (float32 round-off for BERT's epsilon 1e-12).

Placements:

- `"interleave"` (LEMON): block i is followed by its own copies; with
  `L' - L` new blocks spread evenly over the source blocks (any `L' >= L`,
  several copies per block when `L' > 2L`).
- `"stack"`: copies of the whole stack, in order, appended after the last
  block (StackBERT-style); the post-LN chain is then the last source block's.
- a layer pattern of period `p` (Gemma 2 alternates sliding-window and
  global attention, `i % 2`; Gemma 3 repeats five local layers and one
  global, `i % 6`): the model computes each block's kind from its index,
  so `"interleave"` inserts whole periods, `p` new blocks copying source
  blocks `jp ... jp + p - 1` right after block `jp + p - 1`, and every
  block keeps its index modulo `p`.
- `positions=[i, j, ...]`: one new block (a copy of block i) right after
  source block i for each listed index, as LLaMA-Pro places its blocks
  (e.g. after every fourth block); an index listed twice gets two.

References:
- Wang et al., "LEMON: Lossless model expansion", ICLR 2024, section 4.2.
- Gong et al., "Efficient training of BERT by progressively stacking",
  ICML 2019.
"""

import dataclasses

PLACEMENTS = ("interleave", "stack")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block of the target model.

    Attributes:
        template: index of the source block whose weights it copies.
        is_new: True for an inserted block (its outputs are cancelled).
        input_norm_identity: post-LN: its first LayerNorm becomes identity.
        output_norm_from: post-LN: index of the source block whose second
            LayerNorm it carries, or None for identity.
    """

    template: int
    is_new: bool
    input_norm_identity: bool
    output_norm_from: object

    def describe(self):
        return f"{'new<-' if self.is_new else ''}{self.template}"


def copies_per_block(num_source, num_new):
    """How many new blocks follow each source block under "interleave".

    Evenly spread: block i gets `num_new // L` copies, and the remainder
    goes to evenly spaced blocks (`floor((m + 0.5) L / rem)`).
    """
    counts = [num_new // num_source] * num_source
    rem = num_new % num_source
    for m in range(rem):
        counts[int((m + 0.5) * num_source / rem)] += 1
    return counts


def depth_plan(num_source, num_target, placement="interleave", positions=None, period=1):
    """The list of `BlockSpec` for growing `num_source` blocks to `num_target`.

    With `positions` (source block indices), new blocks go right after those
    blocks and `num_target` must be `num_source + len(positions)`. With a
    `period` above 1, `"interleave"` inserts whole periods (see the module
    docstring); `num_target - num_source` must then be a multiple of it.

    >>> [s.describe() for s in depth_plan(4, 6, positions=[1, 3])]
    ['0', '1', 'new<-1', '2', '3', 'new<-3']
    >>> [s.describe() for s in depth_plan(4, 8, period=2)]
    ['0', '1', 'new<-0', 'new<-1', '2', '3', 'new<-2', 'new<-3']
    """
    if positions is not None:
        positions = _check_positions(positions, num_source, num_target)
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}.")
    if num_source < 1:
        raise ValueError(
            f"depth_plan needs a source with at least one block, got {num_source}: "
            "with no block there is nothing to copy."
        )
    if num_target < num_source:
        raise ValueError(
            f"layers={num_target} would remove blocks: the source has "
            f"{num_source}; expansion can only add (layers >= {num_source})."
        )
    num_new = num_target - num_source
    if positions is not None:
        chains = [(i, [i] * positions.count(i)) for i in range(num_source)]
    elif placement == "interleave" and period > 1 and num_new:
        chains = _period_chains(num_source, num_new, period)
    elif placement == "interleave":
        chains = [(i, [i] * c) for i, c in enumerate(copies_per_block(num_source, num_new))]
    else:
        chains = [(i, []) for i in range(num_source - 1)]
        chains.append((num_source - 1, [m % num_source for m in range(num_new)]))
    specs = []
    for anchor, templates in chains:
        specs.append(BlockSpec(anchor, False, False, None if templates else anchor))
        for n, template in enumerate(templates):
            last = n == len(templates) - 1
            specs.append(BlockSpec(template, True, True, anchor if last else None))
    return specs


def _period_chains(num_source, num_new, period):
    """Interleave whole periods: after block `jp + p - 1`, copies of `jp ... jp + p - 1`."""
    if num_new % period or num_source < period:
        raise ValueError(
            f"the blocks follow a pattern of period {period} computed from their index, "
            f"so new blocks must come in whole periods: {num_new} new blocks is not a "
            f"multiple of {period}" + (f" (and the source has only {num_source} blocks)"
                                        if num_source < period else "")
            + f"; ask for layers = {num_source} + a multiple of {period}.")
    counts = copies_per_block(num_source // period, num_new // period)
    chains = [(i, []) for i in range(num_source)]
    for j, count in enumerate(counts):
        end = (j + 1) * period - 1
        chains[end] = (end, list(range(j * period, end + 1)) * count)
    return chains


def _check_positions(positions, num_source, num_target):
    """`positions` as a list of ints, or the `ValueError` that says what is wrong."""
    if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
        raise ValueError(
            f"positions must be a list of source block indices, got {positions!r}.")
    positions = list(positions)
    bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, int)
           or not 0 <= p < num_source]
    if bad:
        raise ValueError(
            f"positions {bad} are not source block indices: the source has {num_source} "
            f"blocks (0 to {num_source - 1}); a new block goes right after the block listed.")
    if num_target != num_source + len(positions):
        raise ValueError(
            f"positions lists {len(positions)} new blocks, so layers must be "
            f"{num_source + len(positions)} (or None), not {num_target}.")
    return positions
