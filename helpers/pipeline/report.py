"""The pages a user opens to present results: a run's `index.html` / `index.md` and a grid's batch index.

Everything is read back from what a run directory holds (`helpers.pipeline.rundir`) — executed notebooks,
`results/*.json`, `figures/` and the batch runner's `run.json` (params, profile, overrides, hash, notebook order) — so
pages can be rebuilt any time:

    report.build_run_index("outputs/default")                 # -> outputs/default/index.html (+ index.md)
    report.build_batch_index([run_dir, ...], out=..., figures=[png, ...])

Links are relative, so the pages open straight from disk.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from helpers.experiments import claims as claims_mod
from helpers.lib.paths import atomic_write_text
from helpers.pipeline import results as results_mod
from helpers.pipeline.rundir import RunDir

HEADLINES = 8  # numbers shown per notebook
PAPERMILL_CELL_TAGS = ("injected-parameters", "papermill-error-cell-tag")

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.35em .6em;vertical-align:top;text-align:left}
th{background:#f3f3f3}td.num{text-align:right}code{background:#f6f8fa;padding:0 .2em}
.complete,.holds{color:#1a7f37}.fails{color:#c62828}.inconclusive{color:#9a6700}
.failed{color:#c62828;font-weight:bold}.stale,.incomplete,.not-run{color:#9a6700}
dl{margin:0;display:grid;grid-template-columns:auto auto;gap:0 .8em}dt{color:#555}
dd{margin:0;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.4em}figure img{width:260px;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
figure.wide img{width:auto;max-width:100%}
"""


def fmt(value: Any) -> str:
    """A headline number for display: 4 significant digits, ints as they are, JSON null (NaN) as `n/a`."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def scalars(results: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The scalar entries of a results dict (nested dicts flattened to dotted keys; `_meta` and lists left out)."""
    out = []
    for key, val in results.items():
        if key == "_meta":
            continue
        if isinstance(val, Mapping):
            out += scalars(val, f"{prefix}{key}.")
        elif val is None or isinstance(val, (bool, int, float)):
            out.append((f"{prefix}{key}", val))
    return out


def headlines(results: Mapping[str, Any], limit: int = HEADLINES) -> tuple[list[tuple[str, str]], int]:
    """The first `limit` scalar results, formatted, and how many more there are."""
    items = scalars(results)
    return [(k, fmt(v)) for k, v in items[:limit]], max(0, len(items) - limit)


def failure_of(executed: Mapping) -> dict | None:
    """Where an executed notebook failed: {cell, line, error}, with `cell` the index in the notebook as written
    (papermill's injected-parameters and error-banner cells not counted); None if no cell raised."""
    index = -1
    for cell in executed.get("cells", []):
        if set(cell.get("metadata", {}).get("tags", [])) & set(PAPERMILL_CELL_TAGS):
            continue
        index += 1
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                source = "".join(cell.get("source", ""))
                line = next((s.strip() for s in source.splitlines() if s.strip()), "")
                return {"cell": index, "line": line, "error": f"{out.get('ename')}: {out.get('evalue')}"}
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _href(target: Path, start: Path) -> str:
    return quote(Path(os.path.relpath(target, start)).as_posix())


@dataclass
class NotebookEntry:
    """One notebook of a run as the index shows it."""

    name: str
    status: str  # complete | failed | incomplete | stale | not run
    seconds: float | None = None
    error: str | None = None
    headlines: list[tuple[str, str]] = field(default_factory=list)
    more: int = 0  # scalar results not shown
    files: dict[str, Path] = field(default_factory=dict)  # "html" / "ipynb" -> path, when present
    figures: list[Path] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)  # the `claims` records of its results file


@dataclass
class RunSummary:
    dir: Path
    manifest: dict
    notebooks: list[NotebookEntry]

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def status(self) -> str:
        failed = [n.name for n in self.notebooks if n.status == "failed"]
        if failed:
            return f"failed: {', '.join(failed)}"
        done = sum(n.status == "complete" for n in self.notebooks)
        return f"{'complete' if done == len(self.notebooks) else 'incomplete'} {done}/{len(self.notebooks)}"

    @property
    def claims(self) -> list[tuple[str, dict]]:
        """(notebook, claim record) of every claim every notebook stored, in notebook order."""
        return [(n.name, c) for n in self.notebooks for c in n.claims]


def _entry(run: RunDir, name: str, params_hash: str | None) -> NotebookEntry:
    ipynb, page = run.executed(name), run.page(name)
    executed = _read_json(ipynb)
    results = results_mod.read(run, name)
    entry = NotebookEntry(name, "not run")
    entry.files = {k: p for k, p in (("html", page), ("ipynb", ipynb)) if p.is_file()}
    entry.figures = sorted(run.figures(name).glob("*.png"))
    pm = (executed or {}).get("metadata", {}).get("papermill", {})
    entry.seconds = pm.get("duration") or (results or {}).get("_meta", {}).get("seconds")
    failure = failure_of(executed) if executed else None
    if failure:
        entry.status = "failed"
        entry.error = f"cell {failure['cell']} (`{failure['line']}`): {failure['error']}"
    elif results is not None:
        stale = params_hash and results.get("_meta", {}).get("params_hash") != params_hash
        entry.status = "stale" if stale else "complete"
    elif executed is not None:
        entry.status = "incomplete"
    if results is not None:
        entry.headlines, entry.more = headlines(results)
        entry.claims = [c for c in results.get("claims", []) if isinstance(c, Mapping)]
    return entry


def summarize(run_dir: str | Path) -> RunSummary:
    """What a run directory holds, notebook by notebook (in the batch runner's order when `run.json` exists)."""
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    names = list(manifest.get("notebooks", []))
    names += sorted(run.notebooks() - set(names))
    return RunSummary(run.path, manifest, [_entry(run, n, manifest.get("params_hash")) for n in names])


# ---------------------------------------------------------------- HTML / markdown rendering

VERDICT_CLASS = {"holds": "holds", "does not hold": "fails", "inconclusive": "inconclusive"}


def measured_text(claim: Mapping) -> str:
    """`0.620 [0.600, 0.640]` of a stored claim record."""
    return claims_mod.measured_text(claim.get("measured"), claim.get("ci_low"), claim.get("ci_high"))


def tally(claims: Iterable[Mapping]) -> str:
    """'5 hold, 3 do not hold, 2 inconclusive'."""
    verdicts = [c.get("verdict") for c in claims]
    return ", ".join(
        f"{verdicts.count(v)} {label}"
        for v, label in (("holds", "hold"), ("does not hold", "do not hold"), ("inconclusive", "inconclusive"))
    )


def _scoreboard_html(run: RunSummary) -> str:
    if not run.claims:
        return "<p>No claims stored yet.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(nb)}</td><td>{html.escape(c.get('claim', c['id']))}</td>"
        f"<td>{html.escape(c.get('paper', ''))}<br><small>{html.escape(c.get('source', ''))}</small></td>"
        f"<td class='num'>{html.escape(measured_text(c))}</td>"
        f"<td class='{VERDICT_CLASS.get(c.get('verdict'), '')}'>{html.escape(str(c.get('verdict')))}</td></tr>"
        for nb, c in run.claims
    )
    return (
        f"<p>{html.escape(tally(c for _, c in run.claims))} (intervals and rules in each notebook's "
        "results file)</p>\n<table><tr><th>notebook</th><th>claim</th><th>paper</th><th>measured [interval]</th>"
        f"<th>verdict</th></tr>\n{rows}</table>"
    )


def _scoreboard_md(run: RunSummary) -> list[str]:
    if not run.claims:
        return ["No claims stored yet."]
    lines = [
        tally(c for _, c in run.claims),
        "",
        "| notebook | claim | paper | measured [interval] | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {nb} | {_md_cell(c.get('claim', c['id']))} | {_md_cell(c.get('paper', ''))} "
        f"({_md_cell(c.get('source', ''))}) | {measured_text(c)} | {c.get('verdict')} |"
        for nb, c in run.claims
    ]
    return lines


def _page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _dl(entry: NotebookEntry) -> str:
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in entry.headlines)
    more = f"<p><small>… {entry.more} more in the results file</small></p>" if entry.more else ""
    return f"<dl>{rows}</dl>{more}" if rows else ""


def _status_html(entry: NotebookEntry) -> str:
    cls = entry.status.replace(" ", "-")
    err = f"<br><small>{html.escape(entry.error)}</small>" if entry.error else ""
    return f"<span class='{cls}'>{html.escape(entry.status)}</span>{err}"


def _params_line(manifest: Mapping) -> list[tuple[str, str]]:
    keys = (("params file", "params_file"), ("profile", "profile"), ("params hash", "params_hash"))
    items = [(label, str(manifest[k])) for label, k in keys if manifest.get(k)]
    if manifest.get("overrides"):
        items.append(("overrides", ", ".join(f"{k}={v}" for k, v in manifest["overrides"].items())))
    return items


def _figure(path: Path, here: Path) -> str:
    href, name = _href(path, here), html.escape(path.stem)
    return f"<figure><a href='{href}'><img src='{href}' alt='{name}'></a><figcaption>{name}</figcaption></figure>"


def _seconds(entry: NotebookEntry) -> str:
    return f"{entry.seconds:.1f} s" if entry.seconds is not None else ""


def render_run_html(run: RunSummary) -> str:
    here = run.dir
    info = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in _params_line(run.manifest))
    rows = []
    for e in run.notebooks:
        link = html.escape(e.name)
        if "html" in e.files:
            link = f"<a href='{_href(e.files['html'], here)}'>{link}</a>"
        if "ipynb" in e.files:
            link += f" <small>(<a href='{_href(e.files['ipynb'], here)}'>ipynb</a>)</small>"
        rows.append(
            f"<tr><td>{link}</td><td>{_status_html(e)}</td><td class='num'>{_seconds(e)}</td><td>{_dl(e)}</td></tr>"
        )
    table = (
        "<table><tr><th>notebook</th><th>status</th><th>time</th><th>headline numbers</th></tr>\n"
        + "\n".join(rows)
        + "</table>"
    )
    gallery = []
    for e in run.notebooks:
        if e.figures:
            gallery.append(f"<h3>{html.escape(e.name)}</h3>\n" + "".join(_figure(f, here) for f in e.figures))
    figures = "<h2>Figures</h2>\n" + "\n".join(gallery) if gallery else ""
    return _page(
        f"Run {run.name}",
        f"<ul>{info}</ul>\n<p>Status: {html.escape(run.status)}</p>\n"
        f"<h2>Claims: paper vs measured</h2>\n{_scoreboard_html(run)}\n"
        f"<h2>Notebooks</h2>\n{table}\n{figures}",
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_run_md(run: RunSummary) -> str:
    lines = [f"# Run {run.name}", ""]
    lines += [f"- {k}: `{v}`" for k, v in _params_line(run.manifest)]
    lines += [
        "",
        f"Status: {run.status}",
        "",
        "## Claims: paper vs measured",
        "",
        *_scoreboard_md(run),
        "",
        "## Notebooks",
        "",
        "| notebook | status | time | headline numbers |",
        "| --- | --- | --- | --- |",
    ]
    for e in run.notebooks:
        name = f"[{e.name}]({_href(e.files['html'], run.dir)})" if "html" in e.files else e.name
        status = e.status + (f": {e.error}" if e.error else "")
        nums = "<br>".join(f"{k} = {v}" for k, v in e.headlines) + (f"<br>… {e.more} more" if e.more else "")
        lines.append(f"| {_md_cell(name)} | {_md_cell(status)} | {_seconds(e)} | {_md_cell(nums)} |")
    figures = [(e.name, f) for e in run.notebooks for f in e.figures]
    if figures:
        lines += ["", "## Figures", ""] + [f"- {n}: [{f.stem}]({_href(f, run.dir)})" for n, f in figures]
    return "\n".join(lines) + "\n"


def build_run_index(run_dir: str | Path) -> Path:
    """Write `index.html` and `index.md` of a run directory; returns the HTML path."""
    run = summarize(run_dir)
    atomic_write_text(RunDir(run.dir).index_md, render_run_md(run))
    return atomic_write_text(RunDir(run.dir).index, render_run_html(run))


def _batch_runs(runs: str | Path | Iterable[str | Path]) -> tuple[list[Path], Path]:
    """(run dirs, default output path) from a directory of runs, a batch manifest (`*.json`), or a list of run dirs."""
    if isinstance(runs, (str, os.PathLike)):
        path = Path(runs)
        if path.is_dir():
            return sorted(p for p in path.iterdir() if RunDir(p).manifest.is_file()), path / "index.html"
        manifest = _read_json(path)
        if manifest is None or "runs" not in manifest:
            raise ValueError(f"{path}: neither a directory of runs nor a batch manifest with a 'runs' list")
        return [path.parent / r for r in manifest["runs"]], path.with_name(f"{path.stem}-index.html")
    dirs = [Path(r) for r in runs]
    if not dirs:
        raise ValueError("build_batch_index: no run directories given")
    return dirs, Path(os.path.commonpath([d.resolve().parent for d in dirs])) / "batch-index.html"


def _chosen(run_dir: Path, notebook: str, keys: Sequence[str]) -> list[tuple[str, str]]:
    """The `keys` of a notebook's results (dotted for nested ones), formatted; missing ones left out."""
    found = dict(scalars(results_mod.read(run_dir, notebook) or {}))
    return [(k, fmt(found[k])) for k in keys if k in found]


def _notebook_link(entry: NotebookEntry, here: Path) -> str:
    """A link to the executed notebook (its HTML, else its .ipynb), or the bare name."""
    target = entry.files.get("html") or entry.files.get("ipynb")
    name = html.escape(entry.name)
    return f"<a href='{_href(target, here)}'>{name}</a>" if target else name


def _claims_matrix(summaries: Sequence[RunSummary], names: Sequence[str]) -> tuple[str, list[str]]:
    """The claims scoreboard per run: one row per claim id, one column per run, cells = verdict and measured
    [interval] (HTML and markdown); empty when no run stored claims."""
    ids = list(dict.fromkeys(c["id"] for s in summaries for _, c in s.claims))
    if not ids:
        return "", []
    by_run = [{c["id"]: c for _, c in s.claims} for s in summaries]
    label = {c["id"]: c.get("claim", c["id"]) for s in summaries for _, c in s.claims}
    head = "<th>claim</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows, md = (
        [],
        ["", "## Claims per run", "", "| claim | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)],
    )
    for i in ids:
        cells = [by_run_i.get(i) for by_run_i in by_run]
        rows.append(
            f"<tr><td>{html.escape(label[i])}<br><small>{html.escape(i)}</small></td>"
            + "".join(
                f"<td class='{VERDICT_CLASS.get(c.get('verdict'), '')}'>{html.escape(str(c.get('verdict')))}<br>"
                f"<small>{html.escape(measured_text(c))}</small></td>"
                if c
                else "<td></td>"
                for c in cells
            )
            + "</tr>"
        )
        md.append(
            f"| {_md_cell(label[i])} | "
            + " | ".join(f"{c.get('verdict')}: {measured_text(c)}" if c else "" for c in cells)
            + " |"
        )
    return f"\n<h2>Claims per run</h2>\n<table><tr>{head}</tr>\n" + "\n".join(rows) + "</table>", md


def build_batch_index(
    runs: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    figures: Sequence[str | Path] = (),
    title: str | None = None,
    headline: Mapping[str, Sequence[str]] | None = None,
    labels: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write one page with a row per run (its overrides, status, a link to its index, each notebook's headline
    numbers) plus any `figures` (PNG paths, e.g. a cross-run robustness plot); also a `.md` twin. Returns the HTML path.

    `runs` is a directory (every subdirectory with a `run.json`), a batch manifest written by helpers.pipeline.batch,
    or a list of run directories; `out` defaults to `index.html` in that directory / `<manifest>-index.html` /
    `batch-index.html`.
    `headline` (notebook -> result keys) makes a notebook's cells show just those numbers under a link to that run's
    executed notebook; `labels` (one mapping per run, in order, e.g. {"factor": "lr", "value": "3x"}) adds leading
    columns.
    """
    dirs, default_out = _batch_runs(runs)
    out = Path(out) if out else default_out
    here = out.parent
    summaries = [summarize(d) for d in dirs]
    if headline:  # the status counts the chosen notebooks only
        summaries = [RunSummary(s.dir, s.manifest, [e for e in s.notebooks if e.name in headline]) for s in summaries]
    labels = list(labels or [{} for _ in dirs])
    if len(labels) != len(dirs):
        raise ValueError(f"build_batch_index: {len(labels)} labels for {len(dirs)} runs")
    label_keys = list(dict.fromkeys(k for lab in labels for k in lab))
    keys = list(dict.fromkeys(k for s in summaries for k in s.manifest.get("overrides", {})))
    if headline:
        notebooks = [n for n in headline if any(e.name == n for s in summaries for e in s.notebooks)]
    else:
        notebooks = list(dict.fromkeys(e.name for s in summaries for e in s.notebooks))
    title = title or f"Batch {out.stem.removesuffix('-index')}"

    columns = [*label_keys, "run", *keys, "status", *notebooks]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns)
    rows = []
    md = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for s, lab in zip(summaries, labels):
        link = _href(RunDir(s.dir).index, here)
        over = s.manifest.get("overrides", {})
        by_name = {e.name: e for e in s.notebooks}
        nums: dict[str, list[tuple[str, str]]] = {
            n: (_chosen(s.dir, n, headline[n]) if headline else by_name[n].headlines) if n in by_name else []
            for n in notebooks
        }
        cells = [f"<td>{html.escape(str(lab.get(k, '')))}</td>" for k in label_keys]
        cells.append(f"<td><a href='{link}'>{html.escape(s.name)}</a></td>")
        cells += [f"<td>{html.escape(str(over.get(k, '')))}</td>" for k in keys]
        cells.append(f"<td>{html.escape(s.status)}</td>")
        for n in notebooks:
            e = by_name.get(n)
            status = _status_html(e) if e and e.status != "complete" else ""
            link_nb = _notebook_link(e, here) + "<br>" if headline and e else ""
            dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in nums[n])
            more = f"<p><small>… {e.more} more in the results file</small></p>" if e and e.more and not headline else ""
            cells.append(f"<td>{link_nb}{status}{f'<dl>{dl}</dl>' if dl else ''}{more}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
        md_nb = []
        for n in notebooks:
            e, text = by_name.get(n), "<br>".join(f"{k} = {v}" for k, v in nums[n])
            target = e and headline and (e.files.get("html") or e.files.get("ipynb"))
            md_nb.append((f"[{n}]({_href(target, here)})<br>" if target else "") + text)
        md_row = [
            *(str(lab.get(k, "")) for k in label_keys),
            f"[{s.name}]({link})",
            *(str(over.get(k, "")) for k in keys),
            s.status,
            *md_nb,
        ]
        md.append("| " + " | ".join(_md_cell(c) for c in md_row) + " |")
    body = f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "</table>"
    names = ["=".join(str(v) for v in lab.values()) or s.name for s, lab in zip(summaries, labels)]
    matrix_html, matrix_md = _claims_matrix(summaries, names)
    body += matrix_html
    md += matrix_md
    if figures:
        body += "\n<h2>Figures</h2>\n" + "".join(
            _figure(Path(f), here).replace("<figure>", "<figure class='wide'>", 1) for f in figures
        )
        md += ["", "## Figures", ""] + [f"![{Path(f).stem}]({_href(Path(f), here)})" for f in figures]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    return atomic_write_text(out, _page(title, body))
