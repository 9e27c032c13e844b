"""Preference data in the AD-PL / MANTA shape, behind `sage prefs build`.

``knowledge`` (defect kinds and objects in words), ``templates`` (phrase banks and the answer
writers), ``build`` (image records → QA groups), ``importers`` (MANTA, MPDD-QA, AD-PL, MMAD, sage-qa →
the same groups), ``split`` (train/val by test image), ``paraphrase`` (optional LLM rewording) and
``pipeline`` (the command's work end to end).
"""
