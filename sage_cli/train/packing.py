"""Shared-prefix packing: training sequences that begin with the same prompt, run as one row.

A row is laid out as

    [ prefix | branch 1 | branch 2 | ... | padding ]

where the prefix is what the sequences share (system prompt, reference and test image tokens, fused
fact tokens, auxiliary sentence; with one question for all, the question and the assistant header too)
and each branch is the rest of one sequence (its question, if they differ, and its answer). Each
branch sees the prefix and itself, causally, and nothing else, and its positions go on from the end of
the prefix as if the prefix were its own; so each branch's hidden states are those of
[prefix, branch] run alone, and the prefix's gradient is the sum over its branches, as in separate
runs. The prefix is computed once instead of once per sequence.

The mask is 4-D, [R, 1, T, T], which transformers hands to the attention as it is: boolean (True:
attend) for SDPA, additive float for eager attention. Flash-attention kernels take no such mask:
`can_pack` says so, and the objectives then run each sequence alone. M-RoPE backbones (Qwen2-VL) get
[3, R, T] positions, each branch's continuing from the prefix's next text position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sage_cli.train.losses import Targets

PACKABLE = ("sdpa", "eager")  # attention implementations that read a custom 4-D mask


def attn_implementation(model) -> str | None:
    """The LLM's attention implementation as transformers set it ("sdpa", "eager", "flash_attention_2", ...)."""
    return getattr(model.backbone.language_model.config, "_attn_implementation", None)


def can_pack(model) -> bool:
    """Whether the LLM's attention takes the 4-D mask a packed row needs."""
    return attn_implementation(model) in PACKABLE


@dataclass
class Branch:
    """One training sequence: the prompt of sample `sample` of an Encoding, then `question` and `answer`."""
    sample: int
    question: str
    answer: str


@dataclass
class Packed:
    """Rows of [prefix, branches...] as the LLM's decoder reads them."""
    inputs_embeds: torch.Tensor  # [R, T, C]
    attention_mask: torch.Tensor  # [R, 1, T, T] bool (SDPA) or additive float (eager)
    position_ids: torch.Tensor  # [R, T], or [3, R, T] for M-RoPE
    targets: Targets  # owner = the branch's index in the order the rows list them


@dataclass
class _Row:
    embeds: torch.Tensor  # [T_r, C]
    segment: torch.Tensor  # [T_r]: 0 prefix, j + 1 branch j
    positions: torch.Tensor  # [A, T_r], A = 3 (M-RoPE) or 1
    at: torch.Tensor  # [N_r] predicting position of each target
    tokens: torch.Tensor  # [N_r]
    owner: torch.Tensor  # [N_r] branch index within the row
    branches: int


def pack(model, enc, rows: list[list[Branch]]) -> Packed:
    """The rows (each a list of branches of one Encoding sample) as one padded, masked batch."""
    built = [_row(model, enc, branches) for branches in rows]
    t = max(r.embeds.shape[0] for r in built)
    first = built[0].embeds
    n_rows, c, axes = len(built), first.shape[1], built[0].positions.shape[0]
    embeds = first.new_zeros(n_rows, t, c)
    segment = torch.full((n_rows, t), -1, dtype=torch.long, device=first.device)  # -1: padding
    positions = torch.zeros(axes, n_rows, t, dtype=torch.long, device=first.device)
    for i, r in enumerate(built):
        n = r.embeds.shape[0]
        embeds[i, :n], segment[i, :n], positions[:, i, :n] = r.embeds, r.segment, r.positions
    return Packed(embeds, branch_mask(segment, model, embeds.dtype),
                  positions[0] if axes == 1 else positions, _targets(built))


def branch_mask(segment: torch.Tensor, model, dtype: torch.dtype) -> torch.Tensor:
    """[R, 1, T, T] from segments [R, T] (0 prefix, j + 1 branch j, -1 padding): a query sees earlier
    keys of the prefix and of its own segment. A padding query sees earlier padding (and the prefix), so
    no row of the mask is empty: an all-masked row would make SDPA's softmax NaN, and NaN reaches the
    gradients even where the output is never read."""
    t = segment.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment.device).tril()  # [T, T]
    q, k = segment[:, :, None], segment[:, None, :]  # [R, T, 1], [R, 1, T]
    allowed = (causal & ((k == 0) | (k == q)))[:, None]  # [R, 1, T, T]
    if attn_implementation(model) == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _row(model, enc, branches: list[Branch]) -> _Row:
    """One row: the shared prefix once, then each branch's own pieces and answer."""
    dtype = enc.v_t.dtype
    layouts = [model.prompt_layout(enc, b.sample, b.question) for b in _one_per_question(branches)]
    pieces, at, images = layouts[0]
    # one question for all (a pair's two answers): it and the assistant header join the prefix
    split = len(pieces) if len(layouts) == 1 else at
    prefix, prefix_images = pieces[:split], images[:split]
    by_question = {b.question: layout for b, layout in zip(_one_per_question(branches), layouts)}
    pos, nxt = _positions(model, prefix, prefix_images, 0)
    embeds, segment, positions = [torch.cat(prefix)], [_fill(prefix, 0)], [pos]
    at_all, tokens, owner = [], [], []
    offset = sum(p.shape[0] for p in prefix)
    prefix_end = offset - 1  # predicts each branch's first token when the branch starts with its answer
    for j, b in enumerate(branches):
        own, _, own_images = by_question[b.question]
        answer, ids = model.answer_piece(b.answer, dtype)
        cont = [p.to(dtype) for p in own[split:]] + [answer]
        lead = sum(p.shape[0] for p in own[split:])  # question tokens before the answer
        embeds.append(torch.cat(cont))
        segment.append(_fill(cont, j + 1))
        positions.append(_positions(model, cont, own_images[split:] + [False], nxt)[0])
        u = torch.arange(ids.shape[0], device=ids.device) + lead  # the answer's places in the branch
        at_all.append(torch.where(u == 0, prefix_end, offset + u - 1))  # position t predicts t + 1
        tokens.append(ids)
        owner.append(torch.full_like(ids, j))
        offset += embeds[-1].shape[0]
    return _Row(torch.cat(embeds), torch.cat(segment), torch.cat(positions, dim=1), torch.cat(at_all),
                torch.cat(tokens), torch.cat(owner), len(branches))


def _one_per_question(branches: list[Branch]) -> list[Branch]:
    """The first branch of each distinct question, in order (the prompt is built once per question)."""
    seen: dict[str, Branch] = {}
    for b in branches:
        seen.setdefault(b.question, b)
    return list(seen.values())


def _fill(pieces: list[torch.Tensor], value: int) -> torch.Tensor:
    n = sum(p.shape[0] for p in pieces)
    return torch.full((n,), value, dtype=torch.long, device=pieces[0].device)


def _positions(model, pieces: list[torch.Tensor], images: list[bool], start: int) -> tuple[torch.Tensor, int]:
    """Positions [A, T] of `pieces` from `start` and the next one: M-RoPE's [3, T] where the backbone has
    them (an image advances by its grid's side), else token counts [1, T]."""
    fn = getattr(model.backbone, "rope_positions", None)
    device = pieces[0].device
    if fn is not None:
        return fn([p.shape[0] for p in pieces], images, start, device=device)
    n = sum(p.shape[0] for p in pieces)
    return (torch.arange(n, device=device) + start)[None], start + n


def _targets(rows: list[_Row]) -> Targets:
    """The rows' targets, flat, with branch numbers running on from row to row."""
    row_ids, owner, base = [], [], 0
    for i, r in enumerate(rows):
        row_ids.append(torch.full_like(r.at, i))
        owner.append(r.owner + base)
        base += r.branches
    return Targets(torch.cat(row_ids), torch.cat([r.at for r in rows]), torch.cat([r.tokens for r in rows]),
                   torch.cat(owner), base)
