"""A real, mixed-length English corpus that exists on every fresh machine: the docstrings of Python's standard
library, split into paragraphs (short one-liners up to long explanations), deduplicated, in a seeded order."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import random
import re
import sys
import warnings
from pathlib import Path

_SKIP = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "__main__", "lib2to3", "ensurepip")


def _docstrings() -> list[str]:
    docs: list[str] = []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    for name in names:
        if name.startswith(("_",) + _SKIP):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # some stdlib modules need optional system libraries
            continue
        if module.__doc__:
            docs.append(module.__doc__)
        for _, obj in sorted(vars(module).items()):
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == name:
                doc = inspect.getdoc(obj)
                if doc:
                    docs.append(doc)
    return docs


def paragraphs() -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for doc in _docstrings():
        for para in re.split(r"\n\s*\n", doc):
            text = " ".join(para.split())
            if len(text) >= 20 and text not in seen and not text.startswith((">>>", "...")):
                seen.add(text)
                out.append(text)
    random.Random(0).shuffle(out)
    return out


def write_corpus(path: Path, rows: int) -> Path:
    """`rows` paragraphs (repeating the list if it is shorter, with distinct ids) as JSONL."""
    paras = paragraphs()
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": i, "text": paras[i % len(paras)]}) + "\n")
    return path


if __name__ == "__main__":
    ps = paragraphs()
    lengths = sorted(len(p) for p in ps)
    print(f"{len(ps)} paragraphs; chars: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
