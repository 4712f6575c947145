"""Offline data for the replication benchmarks, from Debian packages.

- Fashion-MNIST: Debian's `dataset-fashion-mnist` (the IDX files in
  `/usr/share/datasets/fashion-mnist/`), or, for users with internet,
  `tensorflow-datasets`' builder (`--data tfds`).
- English running text: the reStructuredText sources of the Linux kernel
  documentation (`linux-doc-6.1`) and of the Python documentation
  (`python3.11-doc`), and Vim's help (`vim-runtime`), with markup, code blocks
  and tables stripped. Paths are globbed so that other Debian versions work.

The loaders install nothing: a missing package raises `DataMissingError`
naming it and the `apt-get` command that installs it.
"""

import glob
import gzip
import hashlib
import os
import re

import numpy as np

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
TEXT_SOURCES = {
    # package -> glob of its text files
    "linux-doc-6.1": "/usr/share/doc/linux-doc-*/html/_sources/**/*.rst.txt",
    "python3.11-doc": "/usr/share/doc/python3.*/html/_sources/**/*.rst.txt",
    "vim-runtime": "/usr/share/vim/vim*/doc/*.txt",
}
APT_PACKAGES = ("dataset-fashion-mnist", "linux-doc-6.1", "python3.11-doc", "vim-runtime")
APT_COMMAND = "apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES)


class DataMissingError(RuntimeError):
    """A benchmark's data package is not installed."""


def _missing(package, what):
    return DataMissingError(
        f"{what} not found: install Debian's `{package}` package "
        f"(`{APT_COMMAND}`, see benchmarks/README.md)."
    )


# --- Fashion-MNIST ----------------------------------------------------------

def _read_idx(path):
    """An IDX file (the MNIST format): big-endian header, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(source="debian"):
    """Fashion-MNIST as `(x_train, y_train, x_test, y_test)`.

    Images are float32 in [0, 1] of shape `(n, 28, 28, 1)`, labels int32.

    Args:
        source: `"debian"` (the `dataset-fashion-mnist` package, offline) or
            `"tfds"` (`tensorflow_datasets.load("fashion_mnist")`, which
            downloads).
    """
    if source == "tfds":
        import tensorflow_datasets as tfds  # optional, needs internet once

        splits = tfds.as_numpy(tfds.load("fashion_mnist", split=["train", "test"],
                                         batch_size=-1, as_supervised=True))
        (x_train, y_train), (x_test, y_test) = splits
        arrays = [x_train[..., 0], y_train, x_test[..., 0], y_test]
    elif source == "debian":
        names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
        paths = [os.path.join(FASHION_DIR, name) for name in names]
        if not all(os.path.exists(p) for p in paths):
            raise _missing("dataset-fashion-mnist", f"Fashion-MNIST ({FASHION_DIR})")
        arrays = [_read_idx(p) for p in paths]
    else:
        raise ValueError(f"source must be 'debian' or 'tfds', got {source!r}.")
    x_train, y_train, x_test, y_test = arrays
    images = [(x.astype(np.float32) / 255.0)[..., None] for x in (x_train, x_test)]
    return images[0], y_train.astype(np.int32), images[1], y_test.astype(np.int32)


# --- English text -----------------------------------------------------------

_RST_DIRECTIVE = re.compile(r"^\s*\.\. ")
_RST_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+_.:<>])\1{3,}\s*$")
_RST_TABLE = re.compile(r"^\s*[+|][-=+|]")
_RST_ROLE = re.compile(r":[\w:+-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_*")
_RST_MARKS = re.compile(r"``|\*\*|(?<!\w)[*`_|]+|[*`|]+(?!\w)|_+(?=\s|$)")
_VIM_TAG = re.compile(r"\*[^*\s]+\*")
_VIM_LINK = re.compile(r"\|([^|\s]+)\|")
_WORD = re.compile(r"[A-Za-z]")


def _rst_paragraphs(text):
    """Paragraphs of prose: no directives, literal blocks, tables or titles."""
    paragraphs, current, literal_indent = [], [], None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            # A literal block (after `::` or a directive) is every line more
            # indented than the line that opened it, and blank lines.
            if not line.strip() or indent > literal_indent:
                continue
            literal_indent = None
        if not line.strip():
            paragraphs.append(" ".join(current))
            current = []
            continue
        if _RST_DIRECTIVE.match(line):
            paragraphs.append(" ".join(current))
            current, literal_indent = [], indent
            continue
        if _RST_UNDERLINE.match(line) or _RST_TABLE.match(line):
            current = []  # a title's text (or a table row) is not prose
            continue
        current.append(line.strip())
        if line.rstrip().endswith("::"):
            paragraphs.append(" ".join(current))
            current, literal_indent = [], indent
    paragraphs.append(" ".join(current))
    cleaned = []
    for p in paragraphs:
        p = _RST_LINK.sub(r"\1", _RST_ROLE.sub(r"\1", p)).replace("::", ":")
        cleaned.append(_RST_MARKS.sub("", p))
    return cleaned


def _vim_paragraphs(text):
    """Paragraphs of Vim help: examples (`>` ... `<`) and tag lines dropped."""
    paragraphs, current, in_example = [], [], False
    for line in text.splitlines():
        if in_example:
            # An example ends at a line starting with `<` or a non-indented one.
            if line.startswith("<") or (line and not line[0].isspace()):
                in_example = False
                line = line[1:] if line.startswith("<") else line
            else:
                continue
        stripped = line.strip()
        if not stripped or _RST_UNDERLINE.match(line) or "\t\t" in line.rstrip():
            # Tab-aligned lines are command tables, not prose.
            paragraphs.append(" ".join(current))
            current = []
            continue
        opens_example = stripped == ">" or line.rstrip().endswith(" >")
        stripped = stripped[:-1].rstrip() if opens_example else stripped
        current.append(_VIM_LINK.sub(r"\1", _VIM_TAG.sub("", stripped)))
        if opens_example:
            in_example = True
    paragraphs.append(" ".join(current))
    return paragraphs


def _is_prose(paragraph):
    """English sentences: enough words, mostly letters, ends like a sentence."""
    words = paragraph.split()
    if len(words) < 8:
        return False
    letters = len(_WORD.findall(paragraph))
    return letters >= 0.7 * len(paragraph.replace(" ", "")) and paragraph.rstrip()[-1] in ".:;!?)"


def prose(paragraphs):
    """The paragraphs that are prose, with whitespace runs collapsed."""
    return [" ".join(p.split()) for p in paragraphs if _is_prose(p)]


def text_files():
    """`{package: sorted file list}`, deduplicated by real path."""
    found, seen = {}, set()
    for package, pattern in TEXT_SOURCES.items():
        files = []
        for path in sorted(glob.glob(pattern, recursive=True)):
            real = os.path.realpath(path)
            if "/translations/" in path or real in seen or os.path.basename(path) == "tags":
                continue
            seen.add(real)
            files.append(path)
        found[package] = files
    return found


def load_english_paragraphs(max_chars=None):
    """Prose paragraphs from the Debian documentation packages, in file order.

    Args:
        max_chars: stop after this many characters (None: all).

    Returns:
        `(paragraphs, stats)`: a list of str, and a dict package -> number of
        files and characters used.
    """
    found = text_files()
    for package, files in found.items():
        if not files:
            raise _missing(package, f"English text ({TEXT_SOURCES[package]})")
    paragraphs, stats, total = [], {}, 0
    # Interleave the three sources file by file so that a `max_chars` prefix
    # holds all three kinds of text.
    queues = {package: list(files) for package, files in found.items()}
    while any(queues.values()) and (max_chars is None or total < max_chars):
        for package, queue in queues.items():
            if not queue:
                continue
            path = queue.pop(0)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            split = _vim_paragraphs if package == "vim-runtime" else _rst_paragraphs
            kept = prose(split(text))
            paragraphs.extend(kept)
            chars = sum(len(p) for p in kept)
            files_used, chars_used = stats.get(package, (0, 0))
            stats[package] = (files_used + 1, chars_used + chars)
            total += chars
    return paragraphs, stats


def held_out(key, fraction):
    """Deterministic split by content: True for about `fraction` of keys."""
    digest = hashlib.md5(key.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:4], "little") < fraction * 2**32
