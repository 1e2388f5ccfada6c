"""The hottest SASS instructions of each kernel in an Nsight Compute source-page export (scripts/gpu_profile.sh).

    ncu --import REPORT --page source --csv --print-source sass > SOURCE.csv
    python scripts/ncu_hot.py SOURCE.csv [--top 25]

Per kernel: the instructions with the most warp-stall samples (where the warps of the kernel waited), each with
its share of the kernel's samples and, where the export has them, the not-issued samples and executions. Which
column holds what is found by name, so that small differences between Nsight Compute versions do not matter; a
file without such a column says so instead of failing.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

ADDRESS = ("Address", "# Address")
STALL_ALL = "Warp Stall Sampling (All"
STALL_NOT_ISSUED = "Warp Stall Sampling (Not"
EXECUTED = "Instructions Executed"


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def _column(header: list[str], prefix: str) -> int | None:
    return next((i for i, name in enumerate(header) if name.strip().startswith(prefix)), None)


def tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(kernel, header, rows) per table: a header is a row with an address and a source column; the non-CSV or
    one-cell lines before it name the kernel."""
    found: list[tuple[str, list[str], list[list[str]]]] = []
    kernel = ""
    header: list[str] | None = None
    rows: list[list[str]] = []
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        if any(c in ADDRESS for c in cells) and "Source" in cells:
            if header is not None:
                found.append((kernel, header, rows))
            header, rows = cells, []
        elif header is not None and len(cells) == len(header):
            rows.append(cells)
        elif any(cells):
            if header is not None:
                found.append((kernel, header, rows))
                header, rows = None, []
            kernel = " ".join(c for c in cells if c)
    if header is not None:
        found.append((kernel, header, rows))
    return found


def hottest(text: str, top: int = 25) -> str:
    out = []
    for kernel, header, rows in tables(text):
        stall = _column(header, STALL_ALL)
        source = header.index("Source")
        out.append(f"== {kernel or 'kernel'} ({len(rows)} instructions)")
        if stall is None:
            out.append(f"   no '{STALL_ALL}...' column (columns: {', '.join(header)})")
            continue
        not_issued, executed = _column(header, STALL_NOT_ISSUED), _column(header, EXECUTED)
        total = sum(_number(r[stall]) for r in rows) or 1.0
        address = next(i for i, name in enumerate(header) if name in ADDRESS)
        for r in sorted(rows, key=lambda r: -_number(r[stall]))[:top]:
            extra = ""
            if not_issued is not None:
                extra += f"  not issued {_number(r[not_issued]):.0f}"
            if executed is not None:
                extra += f"  executed {_number(r[executed]):.0f}"
            out.append(f"   {100 * _number(r[stall]) / total:5.1f}%  {r[address]:>8}  {r[source][:70]}{extra}")
    return "\n".join(out) if out else "no source table found"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    with open(args.path, encoding="utf-8", errors="replace") as f:
        print(hottest(f.read(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
