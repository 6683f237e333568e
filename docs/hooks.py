"""MkDocs hooks: the benchmark pages quote the stored reports themselves.

A line `<!-- stored-report: results/NAME.json -->` in a page is replaced by
the report's command, date and results table, read from the stored JSON
(`benchmarks/results/NAME.json`, through the `docs/results` link) when the
site is built, so no number on the site is retyped by hand. A marker that
names a missing file or a report without a table fails the build.
"""

import json
import pathlib
import re

_MARKER = re.compile(r"^<!-- stored-report: (\S+) -->$", re.MULTILINE)


def stored_report(docs_dir, relative_path):
    """The markdown that stands for one stored report.

    Args:
        docs_dir: The documentation folder.
        relative_path: The report's path below it (`results/NAME.json`).

    Returns:
        Markdown: a line naming the command, date and file, then the
        report's table (its `markdown` or `table` entry).

    Raises:
        ValueError: If the file is missing or holds no command or table.
    """
    path = pathlib.Path(docs_dir) / relative_path
    if not path.is_file():
        raise ValueError(f"stored-report: {relative_path} does not exist")
    report = json.loads(path.read_text(encoding="utf-8"))
    table = report.get("markdown") or report.get("table")
    if not report.get("command") or not table:
        raise ValueError(f"stored-report: {relative_path} has no command or table")
    date = str(report.get("date", "undated"))[:10]
    name = pathlib.PurePosixPath(relative_path).name
    header = (
        f"Command: `{report['command']}` ({date}; every number and repetition "
        f"in [`benchmarks/results/{name}`]({relative_path}))."
    )
    return f"{header}\n\n{table.strip()}\n"


def on_page_markdown(markdown, page, config, files):
    """Replaces every stored-report marker of a page by the report."""
    del files  # Unused.
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth

    def replace(match):
        target = match.group(1)
        return stored_report(config["docs_dir"], target).replace(
            f"]({target})", f"]({prefix}{target})"
        )

    return _MARKER.sub(replace, markdown)
