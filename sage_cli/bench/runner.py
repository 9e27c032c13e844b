"""The benchmark loop: per item one image encoding and prefill, all its questions decoded as one batch.

Each answered item appends its questions' samples to samples.jsonl at once (one flushed line per
question), so a killed run loses at most the item in flight; `--resume` skips the items whose
questions are all there and answers only the missing ones. The metrics are always recomputed from
samples.jsonl at the end (only for the items of this run's selection).

A sample (samples.jsonl line)::

    {format, group_id, q, category, level, question, truth, answer, verdict, verdict_source, correct,
     p_yes, best_option, sbert, new_tokens, [type, options (MMAD)], [detect_label, detect_score, map_max],
     [detect_question, label_source], [p_defect, defect_verdict], [anomaly_map], [p_probe],
     [mle {type, location, logic, mle} | {failed}]}

Detection: every item whose label is known (`BenchItem.defective`, with its `label_source`) is scored:
on its own detection question's sample when it has one (P(yes), flipped for "free of defects?"),
else on its first question's sample from DETECT_QUESTION's P(yes) (one forward, no decoding). With
--detect-question, that one question is asked of every item instead. The Eq. 1 map's peak (map_max)
and the map itself (anomaly_map, for pixel metrics: localization.py) sit there too, one-shot.

Calibrated detection: with a checkpoint calibrated by `sage calibrate`, the sample carrying an item's
detection label also gets ``p_defect`` (the calibrated P(defect) from the calibration's own question's
P(yes), read once more unless that question was asked, and the map) and ``defect_verdict`` (p_defect at
the stored threshold); metrics.py reports their AUROC and accuracy beside the raw P(yes)'s.

--shots N > 1: each item's N references are encoded together and Eq. 1 runs over the union of their
patches (items.py says how they are drawn).

Verdicts: the protocol and grader of grading.py (verdict_source: word, claim, paper, probe, judge,
p_yes, none); an answer without one counts as wrong. MMAD answers are read with `parse_choice`
("letter"); an unreadable one is wrong under --protocol sage and dropped under mmad (source "none");
their p_yes is null (the first token's yes/no odds say nothing about a letter). SBERT: cosine similarity (all-MiniLM-L6-v2)
of the answer to the top-ranked option; an empty answer scores 0; MMAD has no ranked options (null).
MLE (with a judge): the judge scores the answer against the top-ranked option with the score recipe's
rubric; an empty answer gets 1 on every criterion without asking; MMAD items are not judged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sage_cli.bench import rundir
from sage_cli.bench.items import BenchItem, Loaded
from sage_cli.bench.localization import pixel_results
from sage_cli.bench.mle_judge import BenchJudge
from sage_cli.errors import SageError

EXAMPLES = 4  # test images shown in plots/examples.png
from sage_cli.defaults import DEFAULT_QUESTION as DETECT_QUESTION  # asked of items without a detection question


@dataclass
class BenchOptions:
    fmt: str
    root: Path
    out: Path
    backbone: str | None = None
    checkpoint: str | None = None
    shots: int = 1
    facts: Path | None = None
    max_new_tokens: int = 64
    limit: int | None = None
    categories: list[str] | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    sbert: bool = True
    judge: str | None = None  # "offline:sbert", "endpoint" (the score recipe's), or an OpenAI-compatible URL
    judge_model: str | None = None
    plots: bool = True
    resume: bool = False
    overwrite: bool = False
    strict: bool = False
    detect_question: str | None = None  # AUROC from this one question's P(yes) on every item (items.py)
    protocol: str = "sage"  # grading.PROTOCOLS
    grader: str = "text"  # text | probe | an OpenAI-compatible URL (grading.py)
    grader_model: str | None = None
    wordings: str = "seen"  # mvtec: the questions' wordings, seen | held-out | both (prefs/wordings.py)
    guided: bool = True  # a calibrated checkpoint's detection sets the yes/no it can give (models/guide.py)

    def config(self, judge_name: str | None = None) -> dict:
        return {"format": self.fmt, "root": str(Path(self.root).resolve()), "backbone": self.backbone,
                "checkpoint": str(Path(self.checkpoint).resolve()) if self.checkpoint else None,
                "shots": self.shots, "facts": str(Path(self.facts).resolve()) if self.facts else None,
                "max_new_tokens": self.max_new_tokens, "limit": self.limit, "categories": self.categories,
                "seed": self.seed, "device": self.device, "dtype": self.dtype, "sbert": self.sbert,
                "judge": judge_name, "detect_question": self.detect_question, "protocol": self.protocol,
                "grader": self.grader, "grader_model": self.grader_model, "wordings": self.wordings,
                "guided": self.guided}


@dataclass
class Timing:
    load_s: float = 0.0
    items: int = 0
    encode_s: float = 0.0  # image encoding + fusion + prefill of the shared prompt
    answer_s: float = 0.0  # the batched questions: their prefill and decoding
    new_tokens: int = 0
    questions: int = 0

    def report(self, total_s: float) -> dict:
        n = max(self.items, 1)
        group_s = self.encode_s + self.answer_s
        return {"load_s": self.load_s, "total_s": total_s, "items_timed": self.items,
                "per_group_s": group_s / n if self.items else None,
                "encode_s": self.encode_s / n if self.items else None,
                "answer_s": self.answer_s / n if self.items else None,
                "per_question_s": group_s / self.questions if self.questions else None,
                "new_tokens": self.new_tokens,
                "tokens_per_s": self.new_tokens / self.answer_s if self.answer_s > 0 else None}


@dataclass
class Outcome:
    results: dict
    samples: list[dict]
    examples: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ facts


class Facts:
    """Facts per test image (sage_cli.facts.store.FactsFile), counting the images that had none."""

    def __init__(self, path: Path | None):
        from sage_cli.facts.store import FactsFile

        self.file = FactsFile(path) if path is not None else None
        self.missing = 0

    def __call__(self, image: Path) -> list[str]:
        if self.file is None:
            return []
        found = self.file.lookup(image)
        if found is None:
            self.missing += 1  # answered with the checkpoint's default facts, if any; counted in results.json
            return []
        return found


# ------------------------------------------------------------------------------------------------ the run


def _detection(defective: bool, polarity: int, p_yes: float | None, map_max: float | None,
               source: str | None = None) -> dict:
    """A sample's detection fields: the label (and how it was found), P(defective) from the question's
    P(yes) (+1: "is there a defect?", yes = defective; -1: "is it free of defects?", yes = normal), and
    the training-free detector, the Eq. 1 map's peak (one-shot only)."""
    out = {"detect_label": defective, "label_source": source}
    if p_yes is not None:
        out["detect_score"] = p_yes if polarity > 0 else 1.0 - p_yes
    if map_max is not None:
        out["map_max"] = map_max
    return out


def _sample(item: BenchItem, bq, answer, sbert: float | None, map_max: float | None = None,
            auto_detect: bool = True, grade=None, p_probe: float | None = None) -> dict:
    """One answered question; `auto_detect`: give the item's own detection question its detection fields
    (off under --detect-question, whose fields `run_bench` puts on the item's first sample); `grade`:
    (text, question, p_yes, p_probe) -> (verdict, source) for yes/no questions."""
    from sage_cli.bench.choice import parse_choice

    text = answer.text
    s = {"format": rundir.SAMPLE_FORMAT, "group_id": item.id, "q": bq.q, "category": item.category, "level": bq.level,
         "question": bq.question, "truth": bq.truth, "answer": text}
    p_yes = answer.p_yes
    if item.kind == "choice":
        v = parse_choice(text, bq.options or {})
        source = "letter" if v is not None else "none"
        p_yes = None  # the first token's yes/no odds say nothing about a letter
    else:
        if grade is None:
            from sage_cli.bench.grading import grade_yes_no

            def grade(text, question, p, pp):
                return grade_yes_no(text, question, "sage", "text", p, pp)
        v, source = grade(text, bq.question, answer.p_yes, p_probe)
    s.update(verdict=v, verdict_source=source, correct=v is not None and v == bq.truth, p_yes=p_yes,
             best_option=bq.best_option, sbert=sbert, new_tokens=answer.new_tokens)
    if p_probe is not None:
        s["p_probe"] = p_probe
    if item.kind == "choice":
        s.update(type=bq.type, options=bq.options)
    if auto_detect and bq.detect is not None and (p_yes is not None or map_max is not None):
        label = item.defective if item.defective is not None else (bq.truth if bq.detect > 0 else not bq.truth)
        source = item.label_source if item.defective is not None else f"question:{bq.q}"
        s.update(_detection(label, bq.detect, p_yes, map_max, source))
    return s


def detect_polarity(question: str | None) -> int | None:
    """+1 / -1 for a --detect-question (see `_sample`); SageError when it asks neither way."""
    from sage_cli.bench.verdict import detection_polarity

    if question is None:
        return None
    pol = detection_polarity(question)
    if pol is None:
        raise SageError(f"--detect-question {question!r} does not ask whether the part is defective (or free of "
                        "defects) in so many words; e.g. 'Is there any defect on the test object?'")
    return pol


def _sbert_scores(model, item: BenchItem, qs, answers) -> list[float | None]:
    if model is None:
        return [None] * len(qs)
    pairs = [(i, a.text, bq.best_option) for i, (bq, a) in enumerate(zip(qs, answers))
             if bq.best_option is not None and a.text.strip()]
    out: list[float | None] = [None if bq.best_option is None else 0.0 for bq in qs]  # empty answer: 0
    if pairs:
        emb = model.encode([p[1] for p in pairs] + [p[2] for p in pairs])
        n = len(pairs)
        cos = (emb[:n] * emb[n:]).sum(-1).tolist()
        for (i, _, _), c in zip(pairs, cos):
            out[i] = round(float(c), 6)
    return out


def _example(item: BenchItem, test_img, engine, prefix, first: dict | None) -> dict:
    amap = engine.anomaly(prefix) if prefix is not None else None
    return {"id": item.id, "image": test_img, "anomaly": amap, "question": first.get("question") if first else "",
            "answer": first.get("answer") if first else "", "correct": first.get("correct") if first else None}


@dataclass
class _Run:
    """One benchmark run's state: what `run_bench` sets up once and every item's answering reads."""

    opts: BenchOptions
    loaded: Loaded
    facts: Facts
    config: dict
    base: dict
    done: dict
    polarity: int | None
    judge: "BenchJudge | None"
    llm: object | None
    sbert: object | None
    timing: Timing = field(default_factory=Timing)
    engine: object | None = None
    unlabelled: int = 0
    calibration: dict | None = None  # the checkpoint's stored calibration (models/calibration.py)

    @property
    def samples_path(self) -> Path:
        return Path(self.opts.out) / rundir.SAMPLES

    def get_engine(self):
        if self.engine is None:
            from sage_cli.models.engine import Engine

            t0 = time.perf_counter()
            o = self.opts
            self.engine = Engine.load(o.backbone, o.checkpoint, dtype=o.dtype, device=o.device, seed=o.seed)
            self.timing.load_s = time.perf_counter() - t0
        return self.engine

    def grade(self, text, question, p_yes, p_probe):
        from sage_cli.bench.grading import grade_yes_no

        return grade_yes_no(text, question, self.opts.protocol, self.opts.grader, p_yes, p_probe, self.llm)


def _prepare(opts: BenchOptions, loaded: Loaded) -> _Run:
    """Every check before any work (facts, questions, judges, the run folder), then the folder's start."""
    from sage_cli.bench import grading

    out = Path(opts.out)
    facts = Facts(opts.facts)  # read before any work: a bad facts file fails at once
    polarity = detect_polarity(opts.detect_question)
    judge = BenchJudge(opts.judge, opts.judge_model) if opts.judge else None
    llm = grading.LLMGrader(opts.grader, opts.grader_model) if opts.grader.startswith(("http://", "https://")) else None
    config = opts.config(judge.name if judge else None)
    from sage_cli.models.calibration import of_checkpoint

    # a malformed one fails before any work; zero-shot, the fit of `sage calibrate --shots 0`
    calibration = of_checkpoint(opts.checkpoint, zero_shot=opts.shots == 0)
    # the guide acts only with a calibration: without one the answers are the same either way, and a run kept
    # from before the setting resumes
    config["guided"] = bool(opts.guided and calibration is not None)
    unlabelled = sum(1 for it in loaded.items if it.defective is None)
    if unlabelled and opts.strict:
        first = next(it.id for it in loaded.items if it.defective is None)
        raise SageError(f"{unlabelled} group(s) have no detection label (first: {first}): nothing in the data says "
                        "whether the part is defective")
    rundir.prepare(out, config, opts.resume, opts.overwrite)
    sbert = None
    if opts.sbert and any(q.best_option is not None for it in loaded.items for q in it.questions):
        from sage_cli.models.sbert import SBert

        sbert = SBert.load()
    if judge is not None:
        judge.prepare(sbert)  # the endpoint check, before anything is written
    if llm is not None:
        llm.prepare()
        config["grader_model"] = llm.endpoint.model
    out.mkdir(parents=True, exist_ok=True)
    done = rundir.read_samples(out / rundir.SAMPLES) if opts.resume else {}
    base = {"results_format": rundir.RESULTS_FORMAT, "format": opts.fmt, "root": config["root"], "config": config,
            "versions": rundir.versions(), "git": rundir.git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    rundir.write_results(out, {**base, "status": "running"})
    if opts.checkpoint:  # which question bank the model trained on: "seen" below means today's
        from sage_cli.models.checkpoint import read_config
        from sage_cli.prefs.wordings import TRAINING_WORDINGS

        base["wordings"] = {"bank": TRAINING_WORDINGS, "model": read_config(opts.checkpoint).get("wordings")}
    if calibration is not None:
        val = calibration.get("val") or {}
        base["calibration"] = {"val": val.get("name"), "pairs": val.get("pairs"), "date": calibration.get("date"),
                               "features": calibration.get("features"), "threshold": calibration.get("threshold"),
                               "question": calibration.get("question")}
    return _Run(opts, loaded, facts, config, base, done, polarity, judge, llm, sbert, unlabelled=unlabelled,
                calibration=calibration)


def _answer_item(run: _Run, item: BenchItem, todo: list, test_img, ref_img) -> tuple[list[dict], object]:
    """One item's samples: one encoding, its questions as one batch, probes, scores; (samples, prefix)."""
    from sage_cli.bench import grading
    from sage_cli.bench.verdict import contradicts

    opts, eng = run.opts, run.get_engine()
    t0 = time.perf_counter()
    prefix = eng.encode(test_img, ref_img, run.facts(item.path(item.test_image)))
    t1 = time.perf_counter()
    amap = eng.anomaly(prefix)
    detection = verdicts = None
    if run.config["guided"] and item.kind == "yesno":
        from sage_cli.models import guide
        from sage_cli.models.calibration import detect

        detection = detect(eng, run.calibration, prefix, amap)  # first: it sets the answers' first word
        verdicts = [guide.verdict_for(bq.question, detection, amap) for bq in todo]
    answers = eng.answer_group(prefix, [grading.prompt(bq.prompt, opts.protocol) for bq in todo],
                               max_new_tokens=opts.max_new_tokens, verdicts=verdicts)
    probes = [None] * len(todo)
    if opts.grader == "probe" and item.kind == "yesno":
        probes = [eng.p_yes(prefix, bq.prompt + grading.PROBE_SUFFIX) for bq in todo]
    t2 = time.perf_counter()
    t = run.timing
    t.items, t.encode_s, t.answer_s = t.items + 1, t.encode_s + t1 - t0, t.answer_s + t2 - t1
    t.questions += len(todo)
    t.new_tokens += sum(a.new_tokens for a in answers)
    sims = _sbert_scores(run.sbert, item, todo, answers)
    peak = amap.max if amap is not None else None
    recs = [_sample(item, bq, a, s, peak, auto_detect=run.polarity is None, grade=run.grade, p_probe=pp)
            for bq, a, s, pp in zip(todo, answers, sims, probes)]
    _detect_fallback(item, recs, eng, prefix, peak, opts.detect_question, run.polarity)
    for r, a in zip(recs, answers):
        if a.guided:
            r["guided"] = True
            r["contradicted"] = contradicts(a.text, r["question"])
    _calibrated(run.calibration, recs, eng, prefix, amap, detection)
    if amap is not None and recs[0]["q"] == item.questions[0].q:
        recs[0]["anomaly_map"] = amap.rounded()
    if run.judge is not None:
        mle = run.judge.scores(item, {bq.q: a.text for bq, a in zip(todo, answers)})
        for r in recs:
            if r["q"] in mle:
                r["mle"] = mle[r["q"]]
    return recs, prefix


def _calibrated(calibration: dict | None, recs: list[dict], eng, prefix, amap, d: dict | None = None) -> None:
    """p_defect and defect_verdict on the sample that carries the item's detection label (module doc);
    `d`: the detection when the guide read it already."""
    if calibration is None:
        return
    rec = next((r for r in recs if r.get("detect_label") is not None), None)
    if rec is None:
        return
    from sage_cli.models.calibration import detect

    q = calibration.get("question")
    asked, p = None, None
    if rec.get("detect_question") == q and rec.get("detect_score") is not None:
        asked, p = q, rec["detect_score"]  # the fallback asked it (polarity +1: the score is its P(yes))
    elif rec.get("question") == q and rec.get("p_yes") is not None:
        asked, p = q, rec["p_yes"]
    d = d or detect(eng, calibration, prefix, amap, p, asked)
    if d is not None:
        rec.update(p_defect=d["p_defect"], defect_verdict=d["verdict"] == "defect")


def _references(item: BenchItem):
    """The item's reference image(s) for `Engine.encode`: one PIL image, a list of several, or None."""
    from sage_cli.data.images import load_rgb

    refs = [load_rgb(item.path(r)) for r in item.references]
    return refs if len(refs) > 1 else refs[0] if refs else None


def run_bench(opts: BenchOptions, loaded: Loaded, progress=None, note=None) -> Outcome:
    """Answer every missing question of `loaded.items`, then write results.json and the plots."""
    from sage_cli import jsonl
    from sage_cli.data.images import load_rgb

    note = note or (lambda msg: None)
    t_start = time.perf_counter()
    run = _prepare(opts, loaded)
    examples: list[dict] = []
    unreadable: list[str] = []
    answered = 0
    for n, item in enumerate(loaded.items, 1):
        # a kept sample counts only for the question it answered (a newer question bank words it anew)
        todo = [bq for bq in item.questions if run.done.get((item.id, bq.q), {}).get("question") != bq.question]
        if todo:
            try:
                test_img = load_rgb(item.path(item.test_image))
                ref_img = _references(item)
            except SageError as e:
                unreadable.append(str(e))  # retried by a later --resume; left out of the metrics
                if opts.strict:
                    raise
                continue
            recs, prefix = _answer_item(run, item, todo, test_img, ref_img)
            jsonl.append(run.samples_path, recs)
            run.done.update({(item.id, r["q"]): r for r in recs})
            answered += len(recs)
            if opts.plots and len(examples) < EXAMPLES:
                examples.append(_example(item, test_img, run.engine, prefix, recs[0]))
        if progress:
            progress(n, len(loaded.items))

    keys = [(it.id, bq.q) for it in loaded.items for bq in it.questions]
    samples = [run.done[k] for k in keys if k in run.done]
    if not samples:
        raise SageError(f"no question could be answered ({unreadable[0] if unreadable else 'no items'})")
    rundir.write_samples_csv(Path(opts.out), samples)
    if opts.plots and len(examples) < EXAMPLES:
        examples += _more_examples(loaded.items, run.done, {e["id"] for e in examples}, EXAMPLES - len(examples),
                                   run.get_engine, run.facts)
    results = _results(run, samples, len(keys), answered, unreadable, time.perf_counter() - t_start)
    if opts.plots:
        results["plots"] = _plots(Path(opts.out), opts, results, examples, note)
    rundir.write_results(Path(opts.out), results)
    return Outcome(results, samples, examples, results["notes"])


def _notes(run: _Run, unreadable: list[str], summary: dict | None = None) -> list[str]:
    opts, loaded = run.opts, run.loaded
    notes = []
    if loaded.no_reference:
        notes.append(f"{loaded.no_reference} item(s) without a reference image left out of this one-shot run")
    if loaded.short_references:
        notes.append(f"{loaded.short_references} item(s) found fewer than {opts.shots} normal references; answered "
                     "with those they have")
    if unreadable:
        notes.append(f"{len(unreadable)} item(s) with an unreadable image left out (first: {unreadable[0]})")
    if run.facts.missing:
        notes.append(f"{run.facts.missing} test image(s) had no facts in {opts.facts}; answered with the checkpoint's "
                     "default facts (facts.txt) where it has them, else without facts")
    if loaded.problems:
        notes.append(f"{len(loaded.problems)} data problem(s) skipped while reading (first: {loaded.problems[0]})")
    if opts.checkpoint is None:
        notes.append("no --checkpoint: the SAGE layers are untrained, so these are not a trained model's scores")
    words = run.base.get("wordings")
    if words and words["model"] != words["bank"]:
        notes.append(f"the checkpoint trained on questions of {words['model'] or 'no recorded question bank (before sage-wordings/2)'}; "
                     f"seen/unseen here are read against today's {words['bank']}, some of whose wordings it never saw")
    if run.unlabelled:
        notes.append(f"{run.unlabelled} group(s) have no detection label (no annotation, conclusion or answer says "
                     "whether the part is defective); left out of AUROC")
    if run.calibration is not None and summary is not None:
        cal, base = summary.get("calibrated") or {}, run.base.get("calibration") or {}
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        fitted = (run.calibration or {}).get("shots", 1)
        if cal.get("n") and opts.shots not in (0, fitted):
            notes.append(f"the calibration was fitted on {fitted}-reference pairs; with {opts.shots} references the map's "
                         "peak and mean both run lower, on maps of a kind it was not fitted on")
        if cal.get("n"):
            notes.append(f"calibrated P(defect) (fitted by sage calibrate on {base.get('pairs')} pairs of "
                         f"{base.get('val')}): AUROC {f(cal.get('auroc'))} vs raw P(yes) {f(summary.get('auroc'))}; "
                         f"accuracy at the stored threshold {base.get('threshold')}: {f(cal.get('accuracy'))} "
                         f"(balanced {f(cal.get('balanced_accuracy'))}, n={cal.get('n')})")
    g = (summary or {}).get("guided")
    if g:
        notes.append(f"guided: the first word of {g['answers']} answer(s) came from the calibrated detection "
                     f"({100 * g['accuracy']:.1f}% right); in {g['contradicted']} ({100 * g['contradicted_share']:.1f}%) "
                     "the model's words after it say the opposite")
    return notes


def _results(run: _Run, samples: list[dict], selected: int, answered: int, unreadable: list[str],
             total_s: float) -> dict:
    """results.json: every metric recomputed from the samples, with counts, timing and notes."""
    from sage_cli.bench import metrics

    opts, loaded = run.opts, run.loaded
    sources: dict[str, int] = {}
    for s in samples:
        sources[s["verdict_source"]] = sources.get(s["verdict_source"], 0) + 1
    summary = metrics.summarize(samples, with_types=opts.fmt == "mmad", protocol=opts.protocol)
    summary["pixel"] = pixel_results(loaded.items, samples)
    results = {
        **run.base,
        "protocol": opts.protocol,
        "grader": opts.grader if opts.protocol != "paper" else "paper",
        "status": "done" if len(samples) == selected else "partial",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metrics": summary,
        "counts": {"groups": len({s["group_id"] for s in samples}), "questions": len(samples),
                   "questions_selected": selected, "answered_this_run": answered,
                   "from_earlier_runs": len(samples) - answered, "no_reference": loaded.no_reference,
                   "unreadable": len(unreadable), "data_problems": len(loaded.problems),
                   "facts_missing": run.facts.missing, "verdict_sources": dict(sorted(sources.items()))},
        "timing": run.timing.report(total_s),
        "notes": _notes(run, unreadable, summary),
    }
    if run.engine is not None:
        results["config"] = {**results["config"], "backbone_loaded": run.engine.backbone_name}
    return results


def _detect_fallback(item: BenchItem, recs: list[dict], eng, prefix, peak, question: str | None,
                     polarity: int | None) -> None:
    """Detection fields for an item whose own questions gave none (or every item under --detect-question):
    that question's P(yes), or DETECT_QUESTION's, on the item's first question's sample."""
    if item.defective is None or recs[0]["q"] != item.questions[0].q:
        return
    if item.kind != "yesno":  # MMAD: letters carry no P(yes); the map's peak is the detector
        if peak is not None:
            recs[0].update(detect_label=item.defective, label_source=item.label_source, map_max=peak)
        return
    if question is None:
        if any(bq.detect is not None for bq in item.questions):
            return  # the item's own detection question carries them
        question, polarity = DETECT_QUESTION, +1
    p = eng.p_yes(prefix, question)
    if p is not None or peak is not None:
        recs[0].update(detect_question=question, **_detection(item.defective, polarity, p, peak, item.label_source))


def _more_examples(items, done, have: set, n: int, get_engine, facts) -> list[dict]:
    """Examples for items answered by earlier runs (a resumed run): encoded again, answers from samples."""
    from sage_cli.data.images import load_rgb

    out = []
    for item in items:
        if len(out) >= n:
            break
        first = done.get((item.id, item.questions[0].q))
        if item.id in have or first is None:
            continue
        try:
            test_img = load_rgb(item.path(item.test_image))
            ref_img = _references(item)
        except SageError:
            continue
        eng = get_engine()
        prefix = eng.encode(test_img, ref_img, facts(item.path(item.test_image))) if ref_img is not None else None
        out.append(_example(item, test_img, eng, prefix, first))
    return out


def _plots(out: Path, opts: BenchOptions, results: dict, examples: list[dict], note) -> dict:
    """{name: path relative to the run folder}; empty with a note when matplotlib is missing."""
    from sage_cli.bench import plots

    if not plots.available():
        note("plots skipped: matplotlib is not installed (pip install 'sage-cli[plots]')")
        return {}
    folder = out / rundir.PLOTS
    name = results["config"].get("backbone_loaded") or opts.backbone or "sage-smol"
    label = f"{Path(opts.checkpoint).name if opts.checkpoint else Path(name).name} · {opts.shots}-shot"
    made = {"accuracy_by_level": plots.accuracy_by_level([(label, results["metrics"]["accuracy"])],
                                                         folder / "accuracy_by_level.png",
                                                         title=f"{opts.fmt}: accuracy by level")}
    if examples:
        made["examples"] = plots.examples(examples, folder / "examples.png")
    return {k: str(Path(v).relative_to(out)) for k, v in made.items()}

