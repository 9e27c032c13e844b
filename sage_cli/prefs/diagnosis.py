"""The diagnosis-level questions of a Finding (templates.Writer): reject or release, function, likely cause.

A mixin of `templates.Writer`: it uses the writer's ``f`` (the Finding), ``rng``, ``fields`` and its
``say`` / ``_v`` / ``_question`` helpers, and keeps the answers' ranking rules of templates.py.
"""

from __future__ import annotations

from sage_cli.data.records import Question


def cap(s: str) -> str:
    """The sentence with its first letter in capitals."""
    return s[:1].upper() + s[1:]


class DiagnosisQuestions:
    # Yes means "take it off the line" / yes means "let it go": asked of defective and normal images alike.
    _DECISION_Q = {
        "reject": ("Should the test {obj} be rejected?", "Should this {obj} be pulled from the line?",
                   "Does the test {obj} need any rework?", "Would you reject this {obj}?",
                   "Does the test {obj} fail inspection?", "Should this {obj} be sorted out?",
                   "Is the test {obj} a reject?"),
        "release": ("Can the test {obj} be released as it is?", "Is the test {obj} fit to ship without rework?",
                    "Would this {obj} pass inspection?", "Is the test {obj} acceptable?",
                    "Can this {obj} be used as it is?", "Is the test {obj} ready for delivery?",
                    "Can this {obj} go on to the next step?"),
    }
    # The question may name the kind ({asked}) or not: "does anything on it affect how it works?"
    _FUNCTION_Q = ("Does the {asked} affect how the test {obj} works, beyond its appearance?",
                   "Is the {asked} on the test {obj} more than a cosmetic problem?",
                   "Will the {asked} on this {obj} affect its function?",
                   "Could the {asked} cause the test {obj} to fail in use?",
                   "Does anything on the test {obj} affect how it works?",
                   "Does what you see on this {obj} impair how it works?")
    _CAUSE_Q = ("Is the {asked} on the test {obj} most likely caused by {asked_cause}?",
                "Could {asked_cause} explain the {asked} on the test {obj}?",
                "Was the {asked} on this {obj} probably caused by {asked_cause}?")

    def diagnosis(self) -> Question:
        """One question on what the finding means: reject or release, function, or the likely cause.

        The kind is drawn alike for every image; about a normal image, the function and cause questions
        name a defect kind it could have had, and the answer says it has none.
        """
        kind = self.rng.choice(("reject", "release", "function", "cause"))
        d = self.f.defect if self.f.anomalous else self.f.wrong[0]
        if kind == "cause" and d.key == "anomaly":  # an unknown kind has only a generic cause, too vague to ask
            kind = "function"
        if not self.f.anomalous:
            return self._normal_decision(kind) if kind in self._DECISION_Q else self._normal_meaning(kind)
        if kind == "function":
            return self._defect_function()
        if kind == "cause":
            return self._defect_cause()
        return self._defect_decision(reject=kind == "reject")

    def _action(self) -> dict[str, str]:
        """What to do with the part, as ``action`` (mid-sentence) and ``action_cap`` (a sentence)."""
        if self.f.defect.functional:
            act = self.rng.choice(("reject it and check the step that caused it", "scrap it and check the process upstream",
                                   "pull it and trace the cause before more parts are affected"))
        else:
            act = self.rng.choice(("it fails visual acceptance, so reject it or send it to rework",
                                   "send it to rework: the flaw is cosmetic but outside the standard"))
        return {"action": act, "action_cap": cap(act)}

    def _defect_decision(self, reject: bool) -> Question:
        q = self.say(self._DECISION_Q["reject" if reject else "release"])
        v, nv = self._v(reject), self._v(not reject)
        opts = [
            self.say((
                "{v}. The test {obj} has {def_sized}{at}{extent}, which {consequence}. It most likely comes from {cause}; {action}.",
                "{v}. There is {def_sized}{at}; a flaw like this {consequence}. Likely cause: {cause}. {action_cap}.",
            ), v=v, **self._action()),
            self.say(("{v}, it has a defect and should not go on.", "{v}. It is not in a condition to ship."), v=v),
            self.say((
                "{v}, but only because of {w1_a}{wat}, which comes from {w1_cause}.",
                "{v}, though the flaw looks minor; it is probably {w1_a} from {w1_cause}.",
            ), v=v),
            self.say(("{nv}. The mark is within tolerance; the {obj} can go on as it is.",
                      "{nv}. It is a normal {obj}; nothing needs to be done."), nv=nv),
        ]
        return self._question("diagnosis", q, reject, opts)

    def _defect_function(self) -> Question:
        functional = self.f.defect.functional
        q = self.say(self._FUNCTION_Q, asked=self.fields["noun"])
        if functional:
            opts = [
                self.say((
                    "Yes. The test {obj} has {def_sized}{at}{extent}; a flaw like this {consequence}. Likely cause: {cause}.",
                    "Yes. {def_sized_cap}{at} {consequence}, so it matters in use; it most likely comes from {cause}.",
                ), def_sized_cap=cap(self.fields["def_sized"])),
                self.say(("Yes, it can affect how the {obj} works.", "Yes, it is more than a cosmetic issue.")),
                self.say(("Yes, but only slightly; it is mostly cosmetic.",
                          "Yes, because it comes from {w1_cause}, which weakens the part.")),
                self.say(("No. It is purely cosmetic and can be ignored.", "No, it only changes how the {obj} looks.")),
            ]
        else:
            opts = [
                self.say((
                    "No. The test {obj} has {def_sized}{at}{extent}; a flaw like this {consequence}. It does not change how the {obj} works, but it still fails visual acceptance.",
                    "No. {def_sized_cap}{at} is a matter of appearance: it {consequence}. Likely cause: {cause}.",
                ), def_sized_cap=cap(self.fields["def_sized"])),
                self.say(("No, it is mainly a cosmetic problem.", "No, it affects the looks, not the function.")),
                self.say(("No, it is cosmetic, though it comes from {w1_cause}.",
                          "No, probably not, but it may hide a deeper fault.")),
                self.say(("Yes. It will make the {obj} fail in use.", "Yes, the part cannot work with it.")),
            ]
        return self._question("diagnosis", q, functional, opts)

    def _defect_cause(self) -> Question:
        # Only the kind's own cause is put to the question: a cause asked as wrong could still be
        # possible (an impact can crack a part too), and an answer "no" would then be false.
        q = self.say(self._CAUSE_Q, asked=self.fields["noun"], asked_cause=self.fields["cause"])
        opts = [
            self.say((
                "Yes. The test {obj} has {def_sized}{at}: {look}, typical of {cause}. A flaw like this {consequence}.",
                "Yes. {def_sized_cap}{at} shows {look}, the usual result of {cause}.",
            ), def_sized_cap=cap(self.fields["def_sized"])),
            self.say(("Yes, that is the most likely cause.", "Yes, that fits what I see.")),
            self.say(("Yes, or possibly {w1_cause}; hard to tell from one image.",
                      "Yes, although {w2_cause} would fit as well.")),
            self.say(("No. It comes from {w1_cause}.", "No, there is no {noun}; nothing needs explaining.")),
        ]
        return self._question("diagnosis", q, True, opts)

    def _normal_decision(self, kind: str) -> Question:
        q = self.say(self._DECISION_Q[kind])
        answer = kind == "release"
        v, nv = self._v(answer), self._v(not answer)
        opts = [
            self.say((
                "{v}. It matches {ref} in shape and colour and its {surface} is intact, so there is nothing to fix; it can go on to the next step.",
                "{v}. The {surface} is intact and the outline is complete, the same as {ref}; the {obj} is fine to pass.",
            ), v=v),
            self.say(("{v}, it looks fine.", "{v}. It seems to be in order."), v=v),
            self.say(("{v}, though I would hold it for a second look at the {wloc}, where a faint {w1} might be.",
                      "{v}, probably, but I am not sure about the {wloc}."), v=v),
            self.say(("{nv}. {w1_sized_cap}{wat} makes it a reject.", "{nv}. It has {w1_a}{wat} and should not ship."),
                     nv=nv, w1_sized_cap=cap(self.fields["w1_sized"])),
        ]
        return self._question("diagnosis", q, answer, opts)

    def _normal_meaning(self, kind: str) -> Question:
        """Function or cause of a defect kind the normal image does not have: no, there is none."""
        w1 = self.f.wrong[0]
        bank = self._FUNCTION_Q if kind == "function" else self._CAUSE_Q
        q = self.say(bank, asked=w1.noun, asked_cause=w1.cause)
        opts = [
            self.say((
                "No. The test {obj} has no such flaw: it matches {ref} in shape and colour, and its {surface} is intact.",
                "No. There is nothing of that kind on the test {obj}; outline and {surface} are the same as in {ref}.",
            )),
            self.say(("No, there is no such flaw on it.", "No, the {obj} looks normal.")),
            self.say(("No, I see none, though the {wloc} is hard to judge.",
                      "No, probably not; a faint mark{wat} would be cosmetic at most.")),
            self.say(("Yes. {w1_sized_cap}{wat} {consequence}.", "Yes, the {obj} has {w1_a}{wat} from {w1_cause}."),
                     w1_sized_cap=cap(self.fields["w1_sized"]), consequence=w1.consequence),
        ]
        return self._question("diagnosis", q, False, opts)
