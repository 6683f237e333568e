"""A griffe extension: docstring doctests become fenced `pycon` code blocks.

The library's docstrings carry their examples as doctests (`>>>` lines and
their output) right below an `Example:` line. Markdown would read `>>>` as a
block quote and `['a']` as a link, so each run of doctest lines (from a
`>>>` line to the next blank line) is fenced before mkdocstrings renders it.
"""

import griffe

_PROMPT = ">>>"


def fence_doctests(text):
    """`text` with every unfenced run of doctest lines put in a code fence."""
    lines = text.split("\n")
    out = []
    in_fence = False
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.lstrip(" ")
        if stripped.startswith("```"):
            in_fence = not in_fence
        if in_fence or not stripped.startswith(_PROMPT):
            out.append(line)
            index += 1
            continue
        indent = line[: len(line) - len(stripped)]
        out.append(f"{indent}```pycon")
        while index < len(lines) and lines[index].strip():
            out.append(lines[index])
            index += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fences the doctests of every docstring griffe loads."""

    def on_instance(self, *, obj, **kwargs):
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and _PROMPT in docstring.value:
            docstring.value = fence_doctests(docstring.value)
