"""The paper's metrics (Tables 1-3) from sample records, as plain functions over lists of dicts.

A sample is one answered question (a line of samples.jsonl): at least ``group_id, category, level,
correct``; optionally ``sbert`` (a float), ``mle`` ({type, location, logic, mle}), ``type`` (MMAD's
question type), and on a group's detection question ``detect_label`` / ``detect_score``.

* Accuracy per level (standard, identification, diagnosis) and "average" = over every question, as the
  paper's Average column (a question-weighted mean, not the mean of the three levels).
* Acc-G: the share of groups whose questions are all right. A group with fewer than 5 questions (a
  short record, or an MMAD image with fewer questions) counts with the questions it has.
* AUROC: from (label, score) pairs with the rank formula; tied scores share their mean rank, so a
  tie between a positive and a negative counts one half. None when only one class is present.
"""

from __future__ import annotations

from collections import defaultdict

LEVELS = ("standard", "identification", "diagnosis")


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def accuracy(samples: list[dict]) -> dict:
    """{standard, identification, diagnosis, average}: share of correct answers; None where no question."""
    out = {lv: _mean(float(s["correct"]) for s in samples if s.get("level") == lv) for lv in LEVELS}
    out["average"] = _mean(float(s["correct"]) for s in samples)
    return out


def groups_of(samples: list[dict]) -> dict[str, list[dict]]:
    """Samples by group id, in first-seen order (groups are records, not runs of five lines)."""
    by: dict[str, list[dict]] = {}
    for s in samples:
        by.setdefault(s["group_id"], []).append(s)
    return by


def acc_g(samples: list[dict]) -> float | None:
    """Share of groups with every answer right (whatever their number of questions)."""
    groups = groups_of(samples)
    return _mean(float(all(s["correct"] for s in g)) for g in groups.values())


def auroc(labels: list[bool], scores: list[float]) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting one half.

    Rank formula: (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with tied
    scores given the mean of the ranks they span.
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1  # ranks are 1-based
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        i = j + 1
    pos_ranks = sum(r for r, y in zip(ranks, labels) if y)
    return (pos_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def detection_auroc(samples: list[dict]) -> tuple[float | None, int]:
    """(AUROC, number of groups scored) over the samples that carry a detection label and score."""
    pairs = [(bool(s["detect_label"]), float(s["detect_score"])) for s in samples
             if s.get("detect_label") is not None and s.get("detect_score") is not None]
    return auroc([p[0] for p in pairs], [p[1] for p in pairs]), len(pairs)


def map_auroc(samples: list[dict]) -> float | None:
    """AUROC of the anomaly map's peak as the defect score (a detector that needs no language model)."""
    pairs = [(bool(s["detect_label"]), float(s["map_max"])) for s in samples
             if s.get("detect_label") is not None and s.get("map_max") is not None]
    return auroc([p[0] for p in pairs], [p[1] for p in pairs])


def by_key(samples: list[dict], key: str) -> dict[str, dict]:
    """{value of `key`: {accuracy, acc_g, questions, groups}} for per-category and per-type tables."""
    parts: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        parts[str(s.get(key) or "(none)")].append(s)
    return {k: {"accuracy": _mean(float(s["correct"]) for s in v), "acc_g": acc_g(v), "questions": len(v),
                "groups": len(groups_of(v))} for k, v in sorted(parts.items())}


def sbert_mean(samples: list[dict]) -> float | None:
    return _mean(s["sbert"] for s in samples if s.get("sbert") is not None)


def mle_means(samples: list[dict]) -> dict | None:
    """Mean judge scores {type, location, logic, score, answers, failed}; None when nothing was judged."""
    judged = [s["mle"] for s in samples if isinstance(s.get("mle"), dict) and "mle" in s["mle"]]
    failed = sum(1 for s in samples if isinstance(s.get("mle"), dict) and "failed" in s["mle"])
    if not judged and not failed:
        return None
    return {"type": _mean(m["type"] for m in judged), "location": _mean(m["location"] for m in judged),
            "logic": _mean(m["logic"] for m in judged), "score": _mean(m["mle"] for m in judged),
            "answers": len(judged), "failed": failed}


def summarize(samples: list[dict], with_types: bool = False) -> dict:
    """Every metric of results.json from the samples."""
    auc, n_auc = detection_auroc(samples)
    out = {
        "accuracy": accuracy(samples),
        "acc_g": acc_g(samples),
        "sbert": sbert_mean(samples),
        "mle": mle_means(samples),
        "auroc": auc,
        "auroc_groups": n_auc,
        "auroc_map": map_auroc(samples),
        "per_category": by_key(samples, "category"),
    }
    if with_types:
        out["mmad_per_type"] = by_key(samples, "type")
    return out
