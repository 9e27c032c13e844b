"""The MLE judge (paper Sec. 3.3): scores of ranked answers (Eq. 3), their entropies (Eq. 4) and the
E-DPO pairs chosen from them (Eq. 5). `mle` holds the pure maths, `rubric` the judge prompt and reply
parsing, `judges` the scorers (an LLM behind an OpenAI-compatible endpoint, or offline SBERT)."""
