"""The results table of ``test`` runs: one row per method in ``results.csv`` and ``results.md``."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["read_results_table", "write_results_table"]

# Column headings and number formats of the results table; other columns print with 4 digits.
_HEADINGS = {"psnr": ("PSNR (dB)", ".2f"), "ssim": ("SSIM", ".3f"), "psnr_fixed": ("PSNR, fixed range", ".2f"),
             "ssim_fixed": ("SSIM, fixed range", ".3f"), "nmse": ("NMSE (dB)", ".2f"), "f1": ("F1", ".3f"),
             "seconds_per_image": ("s/image", ".4f"), "images": ("images", "d"),
             "data": ("data", "s"), "checkpoint": ("checkpoint", "s"), "step": ("step", "d")}


def read_results_table(directory: Path) -> Dict[str, Dict[str, str]]:
    """The rows of ``directory/results.csv`` by method name (values as written; ``{}`` without a table)."""
    csv_path = Path(directory) / "results.csv"
    if not csv_path.exists():
        return {}
    with csv_path.open() as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def write_results_table(directory: Path, row: Dict[str, Any]) -> Path:
    """Insert or replace ``row`` (by method name) in ``results.csv`` and rewrite ``results.md``.

    Columns are those of the rows in the table, in order of first appearance; ``<name>_std`` columns
    print as ``mean ± std`` next to ``<name>``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / "results.csv"
    rows: List[Dict[str, Any]] = []
    columns: List[str] = []
    if csv_path.exists():
        with csv_path.open() as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = [r for r in reader if r["method"] != row["method"]]
    columns += [k for k in row if k not in columns]
    rows.append(dict(row))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in columns if c != "method" and not (c.endswith("_std") and c[:-4] in columns)]
    lines = ["| method | " + " | ".join(_HEADINGS.get(c, (c, ""))[0] for c in shown) + " |",
             "|---" * (len(shown) + 1) + "|"]
    for r in rows:
        cells = [str(r["method"])]
        for c in shown:
            cells.append(_cell(r.get(c), _HEADINGS.get(c, (c, ".4g"))[1], r.get(f"{c}_std")))
        lines.append("| " + " | ".join(cells) + " |")
    (directory / "results.md").write_text("\n".join(lines) + "\n")
    return directory / "results.md"


def _cell(value: Any, fmt: str, std: Any = None) -> str:
    if value in (None, ""):
        return ""
    if fmt == "s":
        return str(value)
    value = int(float(value)) if fmt == "d" else float(value)
    text = format(value, fmt)
    return text if std in (None, "") else f"{text} ± {format(float(std), fmt)}"
