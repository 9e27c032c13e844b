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
  Detection (`detection`): AUROC and F1-max (with its threshold, `ad_metrics.f1_max`) for the P(yes)
  score and for the anomaly map's peak, each with its n (groups scored) and the label sources; with a
  calibrated checkpoint also for the calibrated P(defect) ("p_defect"), and (`calibrated`) the accuracy
  and balanced accuracy of its verdicts at the checkpoint's stored threshold.
* MMAD's official summary (`mmad_summary`, protocol ``mmad``), see grading.py.
* Yes/no accuracy on seen and unseen wordings (`by_wording`: whether a question matches a training
  template, prefs/wordings.py) and what always answering "no" / "yes" would score (`baselines`).
* How many answers carry what their question asks for, by what it asks (`relevance`, bench/relevance.py:
  a place for a location question, a kind for a type question, ...).
"""

from __future__ import annotations

from collections import defaultdict

from sage_cli.bench.auroc import auroc

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


def detection(samples: list[dict]) -> dict:
    """Image-level detection from the samples that carry a label: per score (P(yes) "p_yes", map peak
    "map"), {auroc, f1_max, f1_threshold, n, n_pos}; and how the labels were found."""
    from sage_cli.bench.ad_metrics import image_metrics  # numpy: only when metrics are computed

    out = {}
    for name, key in (("p_yes", "detect_score"), ("map", "map_max"), ("p_defect", "p_defect")):
        labels, scores = labelled(samples, key)
        out[name] = image_metrics(labels, scores) if labels else None
    if out["p_defect"] is None:
        del out["p_defect"]  # an uncalibrated checkpoint: no such row
    sources: dict[str, int] = defaultdict(int)
    for s in samples:
        if s.get("detect_label") is not None:
            sources[str(s.get("label_source") or "question").split(":")[0]] += 1
    out["label_sources"] = dict(sorted(sources.items()))
    return out


MMAD_MERGE = {"Object Structure": "Object Analysis", "Object Details": "Object Analysis"}


def mmad_summary(samples: list[dict], normal_flag: str = "good") -> dict:
    """MMAD's official summary: per data set (the image path's first folder) and question type (Object
    Structure and Object Details merged into Object Analysis), accuracy over the answers whose letter was
    read (unreadable ones dropped, not counted wrong); Anomaly Detection as balanced accuracy, the mean of
    the accuracy on normal images (`normal_flag` in the path) and on abnormal ones; per data set the mean
    over its question types; overall the mean over data sets. Percent, as MMAD prints it.

    Differs from the official script in two places, both only where its data differ from MMAD's: a type
    a data set lacks is left out of that set's mean (the script counts it as 0), and the answer after an
    unreadable one is not skipped (the script removes items from the list it is iterating over)."""
    tally: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    detect: dict[str, dict[bool, list[int]]] = defaultdict(lambda: {True: [0, 0], False: [0, 0]})
    dropped = 0
    for s in samples:
        if s.get("verdict") is None:
            dropped += 1
            continue
        image = str(s["group_id"])
        dataset = image.split("/")[0]
        qtype = MMAD_MERGE.get(s.get("type") or "", s.get("type") or "(untyped)")
        t = tally[dataset][qtype]
        t[0] += int(bool(s["correct"]))
        t[1] += 1
        if qtype == "Anomaly Detection":
            d = detect[dataset][normal_flag in image]
            d[0] += int(bool(s["correct"]))
            d[1] += 1
    per_set: dict[str, dict] = {}
    for dataset, types in tally.items():
        row = {q: 100 * c / n for q, (c, n) in types.items()}
        if "Anomaly Detection" in types:
            accs = [c / n if n else 0.0 for c, n in (detect[dataset][True], detect[dataset][False])]
            row["Anomaly Detection"] = 100 * sum(accs) / 2
        row["Average"] = sum(row.values()) / len(row)
        per_set[dataset] = dict(sorted(row.items()))
    types = sorted({q for row in per_set.values() for q in row if q != "Average"})
    mean_row = {q: _mean(row[q] for row in per_set.values() if q in row) for q in types}
    mean_row["Average"] = _mean(row["Average"] for row in per_set.values())
    return {"per_dataset": dict(sorted(per_set.items())), "mean": mean_row, "average": mean_row["Average"],
            "dropped_unreadable": dropped}


def labelled(samples: list[dict], key: str) -> tuple[list[bool], list[float]]:
    """(labels, scores) of the samples that carry a detection label and a `key` score."""
    rows = [s for s in samples if s.get("detect_label") is not None and s.get(key) is not None]
    return [bool(s["detect_label"]) for s in rows], [float(s[key]) for s in rows]


def calibrated(samples: list[dict]) -> dict | None:
    """{auroc, accuracy, balanced_accuracy, n} of the calibrated verdicts (`defect_verdict`, the checkpoint's
    stored threshold) against the detection labels; None when no sample carries one."""
    from sage_cli.models.calibration import accuracies  # what `sage calibrate` reports on its VAL

    rows = [s for s in samples if s.get("detect_label") is not None and s.get("defect_verdict") is not None]
    if not rows:
        return None
    acc = accuracies([bool(s["detect_label"]) for s in rows], [bool(s["defect_verdict"]) for s in rows])
    return {"auroc": auroc(*labelled(rows, "p_defect")), **acc}


def detection_auroc(samples: list[dict]) -> tuple[float | None, int]:
    """(AUROC, number of groups scored) over the samples that carry a detection label and score."""
    labels, scores = labelled(samples, "detect_score")
    return auroc(labels, scores), len(labels)


def map_auroc(samples: list[dict]) -> float | None:
    """AUROC of the anomaly map's peak as the defect score (a detector that needs no language model)."""
    return auroc(*labelled(samples, "map_max"))


def by_key(samples: list[dict], key: str) -> dict[str, dict]:
    """{value of `key`: {accuracy, acc_g, questions, groups}} for per-category and per-type tables."""
    parts: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        parts[str(s.get(key) or "(none)")].append(s)
    return {k: {"accuracy": _mean(float(s["correct"]) for s in v), "acc_g": acc_g(v), "questions": len(v),
                "groups": len(groups_of(v))} for k, v in sorted(parts.items())}


def _yes_no(samples: list[dict]) -> list[dict]:
    """The samples of yes/no questions (MMAD's lettered ones have a letter for truth)."""
    return [s for s in samples if isinstance(s.get("truth"), bool)]


def by_wording(samples: list[dict]) -> dict | None:
    """Yes/no questions split by wording (prefs/wordings.py): {"seen": ..., "unseen": ...} as `by_key`, and
    "families": the same per held-out family found. None when no yes/no question was asked."""
    from sage_cli.prefs.wordings import wording_of

    yes_no = _yes_no(samples)
    if not yes_no:
        return None
    tagged = []
    for s in yes_no:
        split, family = wording_of(str(s.get("question") or ""))
        tagged.append({**s, "wording": split, "family": family})
    out = by_key(tagged, "wording")
    families = by_key([s for s in tagged if s["family"]], "family")
    if families:
        out["families"] = families
    return out


def baselines(samples: list[dict]) -> dict | None:
    """{always_no, always_yes}: {average, acc_g} a constant answer scores on the yes/no questions asked."""
    yes_no = _yes_no(samples)
    if not yes_no:
        return None
    out = {}
    for name, answer in (("always_no", False), ("always_yes", True)):
        hits = [{**s, "correct": s["truth"] == answer} for s in yes_no]
        out[name] = {"average": accuracy(hits)["average"], "acc_g": acc_g(hits)}
    return out


def relevance(samples: list[dict]) -> dict | None:
    """{"all" | "<kind>": {rate, n, accuracy, p_yes_auroc}} by what the question asks (asks.ask's kind): the
    share of yes/no answers that carry what it asks for (bench/relevance.py), their accuracy, and the AUROC of
    P(yes) against the truth; None when no yes/no question was asked."""
    from sage_cli.bench.asks import ask
    from sage_cli.bench.relevance import answers_question

    yes_no = _yes_no(samples)
    if not yes_no:
        return None
    asked = [ask(s.get("question")) for s in yes_no]
    carried = [answers_question(str(s.get("question") or ""), str(s.get("answer") or ""), s.get("verdict_source"), a)
               for s, a in zip(yes_no, asked)]  # each answer read once, whatever kind it is counted under
    out = {}
    for kind in ["all", *sorted({a.kind for a in asked})]:
        picked = [i for i, a in enumerate(asked) if kind in ("all", a.kind)]
        mine, ok = [yes_no[i] for i in picked], [carried[i] for i in picked]
        scored = [s for s in mine if s.get("p_yes") is not None]
        # does the first token's P(yes) follow this kind's truth? (a model that reads every question as "is
        # it defective?" scores far below 0.5 on the "normal" kind, whose yes means the part is fine)
        out[kind] = {"rate": _mean(float(x) for x in ok), "n": len(mine), "accuracy": _mean(float(s["correct"]) for s in mine),
                     "p_yes_auroc": auroc([s["truth"] for s in scored], [float(s["p_yes"]) for s in scored])}
    return out


def guided(samples: list[dict]) -> dict | None:
    """{answers, accuracy, contradicted, contradicted_share} of the guided answers (models/guide.py): how
    many there were, how many were right, and how many go on to say the opposite of the first word they
    were given (bench/verdict.contradicts, read from the text); None when no answer was guided."""
    from sage_cli.bench.verdict import contradicts

    given = [s for s in samples if s.get("guided")]
    if not given:
        return None
    bad = sum(contradicts(str(s.get("answer") or ""), s.get("question")) for s in given)
    return {"answers": len(given), "accuracy": _mean(float(s["correct"]) for s in given), "contradicted": bad,
            "contradicted_share": bad / len(given)}


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


def summarize(samples: list[dict], with_types: bool = False, protocol: str = "sage") -> dict:
    """Every metric of results.json from the samples."""
    det = detection(samples)  # the AUROC columns are its figures
    p_yes, peak = det["p_yes"] or {}, det["map"] or {}
    out = {
        "accuracy": accuracy(samples),
        "acc_g": acc_g(samples),
        "sbert": sbert_mean(samples),
        "mle": mle_means(samples),
        "auroc": p_yes.get("auroc"),
        "auroc_groups": p_yes.get("n", 0),
        "auroc_map": peak.get("auroc"),
        "auroc_map_groups": peak.get("n", 0),
        "detection": det,
        "per_category": by_key(samples, "category"),
        "per_wording": by_wording(samples),
        "baselines": baselines(samples),
        "answers_question": relevance(samples),
        "guided": guided(samples),
    }
    cal = calibrated(samples)
    if cal is not None:  # a calibrated checkpoint's verdicts at its stored threshold
        out["calibrated"] = cal
    if with_types:
        out["mmad_per_type"] = by_key(samples, "type")
    if protocol == "mmad":
        out["mmad"] = mmad_summary(samples)
    return out
