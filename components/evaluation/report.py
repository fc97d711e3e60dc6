"""The comparison report — the paper's Table 4.1, measured: one row per model, as CSV, markdown and
a small HTML page with the plots. Written to `reports/<run>/` and mirrored to `reports/latest/`.
"""

from __future__ import annotations

import csv
import html
import shutil
from pathlib import Path

COLUMNS = [
    "model", "family", "accuracy", "macro_f1", "gflops", "params", "latency_ms_p50", "throughput_img_s",
    "acc_noise_0.1", "acc_noise_0.3", "acc_fgsm_0.05", "acc_fgsm_0.1", "ece", "gan_test", "gan_train",
]  # fmt: skip
PERCENT = {"accuracy", "macro_f1", "acc_noise_0.1", "acc_noise_0.3", "acc_fgsm_0.05", "acc_fgsm_0.1", "gan_test", "gan_train"}


def _fmt(col: str, value) -> str:
    if value is None or value == "":
        return ""
    if col in PERCENT:
        return f"{100 * float(value):.2f} %"
    if col == "params":
        return f"{int(value):,}"
    if col == "gflops":
        return f"{float(value):.4g}"
    if col in ("latency_ms_p50", "ece"):
        return f"{float(value):.3f}"
    if col == "throughput_img_s":
        return f"{float(value):.0f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(c, r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def write_report(rows: list[dict], out_dir: Path, *, title: str, images: dict[str, list[Path]], notes: list[str], latest: Path | None = None) -> Path:
    """Writes report.csv, report.md, report.html (+ copies the images); returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: ("" if r.get(c) is None else r.get(c)) for c in COLUMNS} for r in rows)
    md = [f"# {title}", "", markdown_table(rows), "", *[f"- {n}" for n in notes], ""]
    (out_dir / "report.md").write_text("\n".join(md))
    img_dir = out_dir / "images"
    img_dir.mkdir(exist_ok=True)
    sections = []
    for model, paths in images.items():
        tags = []
        for p in paths:
            if Path(p).exists():
                dest = img_dir / f"{model}-{Path(p).name}"
                if Path(p).resolve() != dest.resolve():
                    shutil.copyfile(p, dest)
                tags.append(f'<figure><img src="images/{html.escape(dest.name)}"><figcaption>{html.escape(Path(p).stem)}</figcaption></figure>')
        sections.append(f"<h2>{html.escape(model)}</h2>{''.join(tags)}")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c, r.get(c)))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
figure{{display:inline-block;margin:6px}}img{{max-width:520px}}</style></head><body>
<h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}</table>
<ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>{"".join(sections)}</body></html>"""
    (out_dir / "report.html").write_text(page)
    if latest is not None:  # a stable path for scripts
        tmp = latest.with_name(latest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out_dir, tmp)
        shutil.rmtree(latest, ignore_errors=True)
        tmp.rename(latest)
    return out_dir / "report.html"
