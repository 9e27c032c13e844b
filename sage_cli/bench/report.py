"""The columns of the paper's Tables 1 and 3 from results.json, as text cells (screen, CSV, Markdown).

Accuracy and Acc-G in percent with one decimal (as the paper prints them), SBERT with two decimals,
AUROC with three, MLE scores (1-5) with two. A metric that does not apply is "-".
"""

from __future__ import annotations

import csv
import io

COLUMNS = ("Standard", "Identification", "Diagnosis", "Average", "Acc-G", "SBERT", "AUROC", "Map AUROC")
MLE_COLUMNS = ("Type", "Location", "Logic", "Score")  # Table 2 and Table 3's "Score"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def cells(results: dict, with_mle: bool = False) -> list[str]:
    m = results.get("metrics") or {}
    acc = m.get("accuracy") or {}
    row = [_pct(acc.get("standard")), _pct(acc.get("identification")), _pct(acc.get("diagnosis")),
           _pct(acc.get("average")), _pct(m.get("acc_g")), _num(m.get("sbert"), 2), _num(m.get("auroc"), 3), _num(m.get("auroc_map"), 3)]
    if with_mle:
        mle = m.get("mle") or {}
        row += [_num(mle.get(k), 2) for k in ("type", "location", "logic", "score")]
    return row


def has_mle(results: list[dict]) -> bool:
    return any((r.get("metrics") or {}).get("mle") for r in results)


def to_csv(names: list[str], results: list[dict]) -> str:
    mle = has_mle(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "format", "shots", *COLUMNS, *(MLE_COLUMNS if mle else ()), "questions"])
    for name, r in zip(names, results):
        cfg = r.get("config") or {}
        w.writerow([name, r.get("format"), cfg.get("shots"), *cells(r, mle), (r.get("counts") or {}).get("questions")])
    return buf.getvalue()


def to_markdown(names: list[str], results: list[dict]) -> str:
    mle = has_mle(results)
    head = ["Run", *COLUMNS, *(MLE_COLUMNS if mle else ())]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in zip(names, results):
        lines.append("| " + " | ".join([name.replace("|", "\\|"), *cells(r, mle)]) + " |")
    return "\n".join(lines) + "\n"
