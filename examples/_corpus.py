"""A small real English corpus that every machine has: Python's own docstrings."""

import importlib
import re

MODULES = [
    "argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email",
    "functools", "http.client", "inspect", "json", "logging", "os", "pathlib",
    "pickle", "random", "re", "shutil", "socket", "sqlite3", "statistics",
    "string", "subprocess", "tarfile", "textwrap", "threading", "typing",
    "unittest", "urllib.parse", "zipfile",
]


def sentences(min_words=6):
    """English sentences from the docstrings of standard-library modules."""
    seen, out = set(), []
    for name in MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""]
        docs += [v.__doc__ for v in vars(module).values() if callable(v) and isinstance(getattr(v, "__doc__", None), str)]
        for doc in docs:
            text = re.sub(r"\s+", " ", doc)
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                sentence = sentence.strip()
                if len(sentence.split()) >= min_words and sentence not in seen and ">>>" not in sentence:
                    seen.add(sentence)
                    out.append(sentence)
    return out
