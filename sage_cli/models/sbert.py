"""Sentence embeddings with all-MiniLM-L6-v2 from its pip package: the paper's SBERT metric and the
offline judge. Same recipe as sentence-transformers (mean of the real tokens' last hidden states,
L2-normalised, at most 256 tokens) without that package."""

from __future__ import annotations

from pathlib import Path

from sage_cli.errors import SageError

MAX_TOKENS = 256  # the model's sentence_bert_config max_seq_length


class SBert:
    """`SBert.load().encode(["a", "b"])` -> [2, 384] unit vectors; `similarity(a, b)` -> cosine."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path | None = None) -> "SBert":
        """From the packaged weights (or a local HF folder); never from the network."""
        from transformers import AutoModel, AutoTokenizer

        from sage_cli.models.packaged import _no_progress_bars, find_packaged

        folder = Path(path) if path is not None else find_packaged("all-minilm-l6-v2")
        try:
            with _no_progress_bars():
                tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
                model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise SageError(f"cannot load all-MiniLM-L6-v2 from {folder}: {e}") from None
        return cls(model.eval(), tok)

    def encode(self, texts: list[str]):
        """Unit-length embeddings, a float32 tensor [len(texts), 384]."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state  # [B, T, 384]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # padding must not count
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, dim=-1))
        if not out:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(out)

    def similarity(self, a: str | list[str], b: str | list[str]):
        """Cosine similarity: a float for two strings, else the [len(a), len(b)] matrix."""
        single = isinstance(a, str) and isinstance(b, str)
        ea = self.encode([a] if isinstance(a, str) else a)
        eb = self.encode([b] if isinstance(b, str) else b)
        sims = ea @ eb.T
        return float(sims[0, 0]) if single else sims
