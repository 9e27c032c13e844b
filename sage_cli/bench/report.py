"""The columns of the paper's Tables 1 and 3 from results.json, as text cells (screen, CSV, Markdown).

Accuracy and Acc-G in percent with one decimal (as the paper prints them), SBERT with two decimals,
AUROC with three and its n (groups scored) beside it, MLE scores (1-5) with two. A metric that does
not apply is "-". A run graded under MMAD's protocol shows MMAD's average in the Average column.
"""

from __future__ import annotations

import csv
import io

COLUMNS = ("Standard", "Identification", "Diagnosis", "Average", "Acc-G", "SBERT", "AUROC", "Map AUROC")
MLE_COLUMNS = ("Type", "Location", "Logic", "Score")  # Table 2 and Table 3's "Score"
WORDING_COLUMNS = ("Seen", "Unseen", "Always No")  # accuracy on seen / unseen wordings, the constant answer


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _auc(v, n) -> str:
    return "-" if v is None else f"{v:.3f} (n={n})" if n is not None else f"{v:.3f}"


def cells(results: dict, with_mle: bool = False, with_n: bool = True) -> list[str]:
    """The COLUMNS (+ MLE_COLUMNS) of one run; `with_n`: AUROC cells carry their n (screen, Markdown)."""
    m = results.get("metrics") or {}
    acc = m.get("accuracy") or {}
    average = acc.get("average")
    if (m.get("mmad") or {}).get("average") is not None:
        average = m["mmad"]["average"] / 100
    row = [_pct(acc.get("standard")), _pct(acc.get("identification")), _pct(acc.get("diagnosis")),
           _pct(average), _pct(m.get("acc_g")), _num(m.get("sbert"), 2), _auc(m.get("auroc"), m.get("auroc_groups") if with_n else None),
           _auc(m.get("auroc_map"), m.get("auroc_map_groups") if with_n else None)]
    if with_mle:
        mle = m.get("mle") or {}
        row += [_num(mle.get(k), 2) for k in ("type", "location", "logic", "score")]
    return row


def detection_rows(results: dict) -> list[list[str]]:
    """[score, AUROC, F1-max, threshold, n, pixel AUROC, AUPRO] rows for P(yes), the calibrated P(defect)
    (a calibrated checkpoint) and the map peak."""
    m = results.get("metrics") or {}
    det, pix = m.get("detection") or {}, m.get("pixel") or {}
    rows = []
    for name, label in (("p_yes", "P(yes)"), ("p_defect", "P(defect), calibrated"), ("map", "map peak (Eq. 1)")):
        d = det.get(name)
        if not d:
            continue
        px = [_num(pix.get("pixel_auroc"), 3), _num(pix.get("aupro"), 3)] if name == "map" else ["", ""]
        rows.append([label, _num(d.get("auroc"), 3), _num(d.get("f1_max"), 3), _num(d.get("f1_threshold"), 3),
                     str(d.get("n")), *px])
    return rows


def wording_cells(results: dict) -> list[str]:
    """WORDING_COLUMNS of one run (prefs/wordings.py; "-" for a run from before them or without such questions)."""
    m = results.get("metrics") or {}
    w, base = m.get("per_wording") or {}, (m.get("baselines") or {}).get("always_no") or {}
    return [_pct((w.get("seen") or {}).get("accuracy")), _pct((w.get("unseen") or {}).get("accuracy")),
            _pct(base.get("average"))]


def has_wordings(results: list[dict]) -> bool:
    return any((r.get("metrics") or {}).get("per_wording") for r in results)


def protocol_of(results: dict) -> str:
    return str(results.get("protocol") or "sage")


def has_mle(results: list[dict]) -> bool:
    return any((r.get("metrics") or {}).get("mle") for r in results)


def to_csv(names: list[str], results: list[dict]) -> str:
    mle, words = has_mle(results), has_wordings(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "format", "protocol", "shots", *COLUMNS, *(MLE_COLUMNS if mle else ()),
                *(WORDING_COLUMNS if words else ()), "questions", "AUROC n", "Map AUROC n"])
    for name, r in zip(names, results):
        cfg, m = r.get("config") or {}, r.get("metrics") or {}
        w.writerow([name, r.get("format"), protocol_of(r), cfg.get("shots"), *cells(r, mle, with_n=False),
                    *(wording_cells(r) if words else ()), (r.get("counts") or {}).get("questions"),
                    m.get("auroc_groups"), m.get("auroc_map_groups")])
    return buf.getvalue()


def to_markdown(names: list[str], results: list[dict]) -> str:
    mle, words = has_mle(results), has_wordings(results)
    head = ["Run", "Protocol", *COLUMNS, *(MLE_COLUMNS if mle else ()), *(WORDING_COLUMNS if words else ())]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for name, r in zip(names, results):
        row = [name.replace("|", "\\|"), protocol_of(r), *cells(r, mle), *(wording_cells(r) if words else ())]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
