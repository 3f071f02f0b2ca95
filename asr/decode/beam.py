"""CTC prefix beam search with optional n-gram LM fusion, vectorized over batch x beam.

The search keeps, per utterance, `beam_size` distinct label prefixes, each with two log
probabilities: p_b (all alignments of the prefix that end in blank) and p_nb (end in its last
label) (Graves 2012, ch. 7; Hannun et al. 2014, "First-pass LVCSR with CTC", alg. 1). At each
frame a prefix either stays (blank, or its last label repeated without a blank between) or
grows by one of the frame's top-k labels; a repeat of the last label only grows the prefix
from p_b, because without a blank between them two equal labels are one. A grown prefix that
equals another prefix still in the beam (l + c == l') is merged into it.

Everything is a tensor of shape (batch, beam) or (batch, beam, k): prefixes are identified by
a 62-bit hash (the same two-modulus polynomial hash as the LM keys), merging is an equality
test against the beam's hashes, selection is one `topk` over the stay and grow candidates, and
the prefixes themselves are only spelled out at the end from per-frame back-pointers. The
code is the same on CPU and CUDA and never leaves the device inside the frame loop.

Scores: log P_ctc(prefix) + lm_weight * ln P_lm(words) + word_bonus * num_words. A fusion object
decides what a "word" is: `WordLMFusion` scores whole words at each delimiter (the space of a
character model) and at the end, `TokenLMFusion` scores every label (a phone n-gram).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from asr.decode.lm import NGramLM, hash_step, join_key
from asr.text import BLANK_ID, SPACE

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    ids: list[int]  # labels, blanks and repeats removed
    score: float  # acoustic + lm_weight * lm + word_bonus * num_words
    acoustic: float  # ln P_ctc(ids | audio), summed over alignments (or the best one, merge="max")
    lm: float  # ln P_lm of the words, </s> included (0 without an LM)
    num_words: int  # words (or tokens) the LM scored


State = dict[str, torch.Tensor]  # every tensor (batch, beam, ...)


class TokenLMFusion:
    """Token-level fusion: every label is an LM word (its symbol string), e.g. a phone n-gram.
    Works for any tokenizer: give it the tokenizer's symbols (index = label id)."""

    def __init__(self, lm: NGramLM, symbols: Sequence[str]):
        self.lm = lm
        # label id -> LM word id (<unk> for symbols the LM does not know; blank is never scored)
        self.token_words = torch.tensor([lm.word_id(s) for s in symbols], dtype=torch.long, device=lm.device)

    def to(self, device: torch.device) -> "TokenLMFusion":
        self.lm.to(device)
        self.token_words = self.token_words.to(device)
        return self

    def init_state(self, batch: int, beam: int) -> State:
        return {"ctx": self.lm.start_state(batch, beam)}

    def candidate_scores(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (batch, beam, k) -> LM ln prob (batch, beam, k), words added (batch, beam, k)."""
        ctx = state["ctx"][:, :, None, :].expand(*tokens.shape, -1)  # (batch, beam, k, order-1)
        logp, _ = self.lm.score(ctx, self.token_words[tokens])
        return logp, torch.ones_like(logp)

    def advance(self, state: State, tokens: torch.Tensor, grown: torch.Tensor) -> State:
        """tokens (batch, beam) appended where grown (batch, beam) is true."""
        ctx = state["ctx"]
        shifted = torch.cat([ctx[..., 1:], self.token_words[tokens][..., None]], dim=-1) if ctx.shape[-1] > 1 else self.token_words[tokens][..., None]
        return {"ctx": torch.where(grown[..., None], shifted, ctx)}

    def final_scores(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        eos = torch.full(state["ctx"].shape[:-1], self.lm.eos, dtype=torch.long, device=self.lm.device)
        logp, _ = self.lm.score(state["ctx"], eos)
        return logp, torch.zeros_like(logp)


class WordLMFusion:
    """Word-level fusion for character models: a word is scored by the LM when the delimiter
    label (space) ends it, and the last word plus </s> at the end. Words the LM does not list
    score as <unk>."""

    def __init__(self, lm: NGramLM, symbols: Sequence[str], delimiter: str = SPACE):
        if delimiter not in symbols:
            raise ValueError(f"the word delimiter {delimiter!r} is not one of the labels")
        self.lm = lm
        self.delimiter = list(symbols).index(delimiter)
        label_of = {s: i for i, s in enumerate(symbols) if i != BLANK_ID}
        keys, word_ids = [], []
        for word, wid in lm.word_ids.items():
            labels = [label_of.get(c) for c in word]
            if wid in (lm.bos, lm.eos, lm.unk) or not labels or None in labels:
                continue  # no label sequence spells it, so it can never be looked up
            k1 = k2 = torch.zeros((), dtype=torch.long)
            for label in labels:
                k1, k2 = hash_step(k1, k2, torch.tensor(label))
            keys.append(int(join_key(k1, k2)))
            word_ids.append(wid)
        keys_t = torch.tensor(keys, dtype=torch.long)
        order = torch.argsort(keys_t)
        self.spelling_keys = keys_t[order].to(lm.device)  # (num_spelled,) sorted
        self.spelling_words = torch.tensor(word_ids, dtype=torch.long)[order].to(lm.device)  # (num_spelled,)

    def to(self, device: torch.device) -> "WordLMFusion":
        self.lm.to(device)
        self.spelling_keys, self.spelling_words = self.spelling_keys.to(device), self.spelling_words.to(device)
        return self

    def init_state(self, batch: int, beam: int) -> State:
        zeros = torch.zeros(batch, beam, dtype=torch.long, device=self.lm.device)
        return {"ctx": self.lm.start_state(batch, beam), "h1": zeros, "h2": zeros.clone(), "chars": zeros.clone()}

    def _current_word(self, state: State) -> torch.Tensor:
        """LM word id of each hypothesis's unfinished word (batch, beam); <unk> if unlisted."""
        key = join_key(state["h1"], state["h2"])
        if self.spelling_keys.numel() == 0:
            return torch.full_like(key, self.lm.unk)
        idx = torch.searchsorted(self.spelling_keys, key).clamp_(max=self.spelling_keys.numel() - 1)
        return torch.where(self.spelling_keys[idx] == key, self.spelling_words[idx], self.lm.unk)

    def candidate_scores(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Only the delimiter scores anything, and one score per hypothesis covers it.
        word_logp, _ = self.lm.score(state["ctx"], self._current_word(state))  # (batch, beam)
        ends_word = (tokens == self.delimiter) & (state["chars"] > 0)[..., None]  # (batch, beam, k)
        logp = torch.where(ends_word, word_logp[..., None], 0.0)
        return logp, ends_word.to(logp.dtype)

    def advance(self, state: State, tokens: torch.Tensor, grown: torch.Tensor) -> State:
        word = self._current_word(state)
        ends_word = grown & (tokens == self.delimiter) & (state["chars"] > 0)
        in_word = grown & (tokens != self.delimiter)
        ctx = state["ctx"]
        shifted = torch.cat([ctx[..., 1:], word[..., None]], dim=-1) if ctx.shape[-1] > 1 else word[..., None]
        h1, h2 = hash_step(state["h1"], state["h2"], tokens)
        delim = grown & (tokens == self.delimiter)
        zero = torch.zeros_like(h1)
        return {
            "ctx": torch.where(ends_word[..., None], shifted, ctx),
            "h1": torch.where(in_word, h1, torch.where(delim, zero, state["h1"])),
            "h2": torch.where(in_word, h2, torch.where(delim, zero, state["h2"])),
            "chars": torch.where(in_word, state["chars"] + 1, torch.where(delim, zero, state["chars"])),
        }

    def final_scores(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        pending = state["chars"] > 0  # (batch, beam) an unfinished word to score first
        word_logp, ctx = self.lm.score(state["ctx"], self._current_word(state))
        ctx = torch.where(pending[..., None], ctx, state["ctx"])
        eos = torch.full(pending.shape, self.lm.eos, dtype=torch.long, device=self.lm.device)
        eos_logp, _ = self.lm.score(ctx, eos)
        return torch.where(pending, word_logp, 0.0) + eos_logp, pending.to(eos_logp.dtype)


Fusion = TokenLMFusion | WordLMFusion


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (batch, beam, ...) rows picked by index (batch, beam') -> (batch, beam', ...)."""
    if x.dim() == 2:
        return x.gather(1, index)
    return x.gather(1, index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))


def skip_blank_frames(log_probs: torch.Tensor, lengths: torch.Tensor, threshold: float, blank: int = BLANK_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop frames whose blank probability exceeds `threshold` when the frame before did too.
    The first frame of each run is kept, so a label repeated across the run still reads as two.

    log_probs (batch, frames, vocab), lengths (batch,) -> compacted copies of both.
    """
    frames = log_probs.shape[1]
    valid = torch.arange(frames, device=log_probs.device)[None, :] < lengths[:, None]  # (batch, frames)
    blank_run = log_probs[..., blank] > math.log(threshold)  # (batch, frames)
    drop = blank_run.clone()
    drop[:, 0] = False
    drop[:, 1:] &= blank_run[:, :-1]
    keep = valid & ~drop
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept frames first, in order
    compacted = log_probs.gather(1, order[..., None].expand(-1, -1, log_probs.shape[2]))
    new_lengths = keep.sum(dim=1)
    num_frames = int(new_lengths.max()) if new_lengths.numel() else 0
    return compacted[:, : max(num_frames, 1)], new_lengths


@torch.inference_mode()
def decode_beam(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    beam_size: int = 16,
    token_top_k: int = 16,
    token_min_logp: float = NEG_INF,
    blank_skip: float = 1.0,
    fusion: Fusion | None = None,
    lm_weight: float = 0.5,
    word_bonus: float = 0.0,
    nbest: int = 1,
    merge: str = "sum",
    blank: int = BLANK_ID,
) -> list[list[Hypothesis]]:
    """Prefix beam search over a batch; returns the `nbest` best hypotheses per utterance, best first.

    log_probs (batch, frames, vocab) log-softmax output, lengths (batch,).
    token_top_k: labels tried per frame (the frame's most probable non-blank labels);
    token_min_logp: and only those with log prob at least this; blank_skip: frames whose blank
    probability exceeds it are skipped after the first of a run (1.0 = never);
    merge: "sum" adds the probabilities of alignments of the same prefix (prefix search),
    "max" keeps the best one (Viterbi; with beam 1 and no LM this is exactly greedy decoding).
    """
    if merge not in ("sum", "max"):
        raise ValueError(f"merge must be 'sum' or 'max', not {merge!r}")
    if beam_size < 1 or token_top_k < 1:
        raise ValueError("beam_size and token_top_k must be at least 1")
    plus = torch.logaddexp if merge == "sum" else torch.maximum
    device = log_probs.device
    log_probs = log_probs.float()
    lengths = lengths.to(device)
    if blank_skip < 1.0:
        log_probs, lengths = skip_blank_frames(log_probs, lengths, blank_skip, blank)
    batch, frames, vocab = log_probs.shape
    beam, k = beam_size, min(token_top_k, vocab - 1)
    rows = torch.arange(batch, device=device)[:, None]  # (batch, 1)

    p_b = torch.full((batch, beam), NEG_INF, device=device)  # (batch, beam)
    p_b[:, 0] = 0.0  # the empty prefix, before any frame
    p_nb = torch.full((batch, beam), NEG_INF, device=device)  # (batch, beam)
    last = torch.full((batch, beam), blank, dtype=torch.long, device=device)  # blank = no label yet
    h1 = torch.zeros(batch, beam, dtype=torch.long, device=device)  # prefix hash halves
    h2 = torch.zeros_like(h1)
    lm_total = torch.zeros(batch, beam, device=device)  # ln P_lm so far
    words = torch.zeros(batch, beam, device=device)  # words scored so far
    state = fusion.init_state(batch, beam) if fusion is not None else {}
    parents = torch.zeros(frames, batch, beam, dtype=torch.long, device=device)  # back-pointers
    emitted = torch.full((frames, batch, beam), -1, dtype=torch.long, device=device)  # label added, -1 none
    keep_slot = torch.arange(beam, device=device).expand(batch, beam)

    for t in range(frames):
        lp = log_probs[:, t]  # (batch, vocab)
        active = (t < lengths)[:, None]  # (batch, 1)
        valid = (p_b > NEG_INF) | (p_nb > NEG_INF)  # (batch, beam)
        total = plus(p_b, p_nb)  # (batch, beam)

        # stay: blank, or the last label again
        stay_b = total + lp[:, blank, None]  # (batch, beam)
        stay_nb = p_nb + lp.gather(1, last)  # (batch, beam); last == blank gives -inf via p_nb
        stay_nb = torch.where(last == blank, NEG_INF, stay_nb)

        # grow: the frame's top-k labels
        labels_lp = lp.clone()
        labels_lp[:, blank] = NEG_INF
        top_lp, top_id = labels_lp.topk(k, dim=1)  # (batch, k)
        top_lp = torch.where(top_lp >= token_min_logp, top_lp, NEG_INF)
        repeat = top_id[:, None, :] == last[:, :, None]  # (batch, beam, k)
        grow = torch.where(repeat, p_b[..., None], total[..., None]) + top_lp[:, None, :]  # (batch, beam, k)
        g1, g2 = hash_step(h1[..., None], h2[..., None], top_id[:, None, :])  # (batch, beam, k)

        # l + c already in the beam as l': fold its probability into l' and drop the candidate
        same = (g1[..., None] == h1[:, None, None, :]) & (g2[..., None] == h2[:, None, None, :])  # (batch, beam, k, beam)
        same &= valid[:, None, None, :] & valid[:, :, None, None]
        folded = torch.where(same, grow[..., None], NEG_INF).flatten(1, 2)  # (batch, beam*k, beam)
        folded = folded.logsumexp(dim=1) if merge == "sum" else folded.amax(dim=1)  # (batch, beam)
        stay_nb = plus(stay_nb, folded)
        grow = torch.where(same.any(dim=-1), NEG_INF, grow)

        if fusion is not None:
            grow_lm, grow_words = fusion.candidate_scores(state, top_id[:, None, :].expand(batch, beam, k))
        else:
            grow_lm = grow_words = torch.zeros_like(grow)
        bonus = lm_weight * lm_total + word_bonus * words  # (batch, beam)
        stay_score = plus(stay_b, stay_nb) + bonus
        grow_score = grow + (bonus[..., None] + lm_weight * grow_lm + word_bonus * grow_words)
        scores = torch.cat([stay_score, grow_score.flatten(1)], dim=1)  # (batch, beam + beam*k)
        _, pick = scores.topk(beam, dim=1)  # (batch, beam)

        is_grow = pick >= beam
        parent = torch.where(is_grow, (pick - beam) // k, pick)  # (batch, beam)
        label = torch.where(is_grow, top_id.gather(1, ((pick - beam) % k).clamp(min=0)), blank)  # (batch, beam)
        flat = (pick - beam).clamp(min=0)  # index into (beam*k)
        new_p_b = torch.where(is_grow, NEG_INF, stay_b.gather(1, parent))
        new_p_nb = torch.where(is_grow, grow.flatten(1).gather(1, flat), stay_nb.gather(1, parent))
        new_lm = lm_total.gather(1, parent) + torch.where(is_grow, grow_lm.flatten(1).gather(1, flat), 0.0)
        new_words = words.gather(1, parent) + torch.where(is_grow, grow_words.flatten(1).gather(1, flat), 0.0)
        new_last = torch.where(is_grow, label, last.gather(1, parent))
        n1, n2 = hash_step(h1.gather(1, parent), h2.gather(1, parent), label)
        new_h1 = torch.where(is_grow, n1, h1.gather(1, parent))
        new_h2 = torch.where(is_grow, n2, h2.gather(1, parent))
        if fusion is not None:
            new_state = fusion.advance({name: _gather(x, parent) for name, x in state.items()}, label, is_grow)
            state = {name: torch.where(active.reshape(batch, 1, *([1] * (x.dim() - 2))), x, state[name]) for name, x in new_state.items()}

        # utterances that have ended keep their beam as it is
        p_b = torch.where(active, new_p_b, p_b)
        p_nb = torch.where(active, new_p_nb, p_nb)
        lm_total = torch.where(active, new_lm, lm_total)
        words = torch.where(active, new_words, words)
        last = torch.where(active, new_last, last)
        h1 = torch.where(active, new_h1, h1)
        h2 = torch.where(active, new_h2, h2)
        parents[t] = torch.where(active, parent, keep_slot)
        emitted[t] = torch.where(active & is_grow, label, -1)

    acoustic = plus(p_b, p_nb)  # (batch, beam)
    if fusion is not None:
        final_lm, final_words = fusion.final_scores(state)
        lm_total, words = lm_total + final_lm, words + final_words
    score = acoustic + lm_weight * lm_total + word_bonus * words
    score = torch.where(acoustic > NEG_INF, score, NEG_INF)
    order = score.argsort(dim=1, descending=True)[:, : min(nbest, beam)]  # (batch, nbest)
    return _backtrack(parents, emitted, order, [score, acoustic, lm_total, words])


def _backtrack(parents: torch.Tensor, emitted: torch.Tensor, order: torch.Tensor, values: list[torch.Tensor]) -> list[list[Hypothesis]]:
    """Spell out the chosen hypotheses from the per-frame back-pointers (one device transfer)."""
    frames = parents.shape[0]
    slot = order  # (batch, nbest) slot of each hypothesis after the last frame
    labels = []
    for t in range(frames - 1, -1, -1):
        labels.append(emitted[t].gather(1, slot))
        slot = parents[t].gather(1, slot)
    spelled = torch.stack(labels[::-1], dim=-1).cpu() if labels else torch.empty(*order.shape, 0, dtype=torch.long)  # (batch, nbest, frames)
    score, acoustic, lm, words = (v.gather(1, order).cpu() for v in values)
    results = []
    for b in range(order.shape[0]):
        hyps = []
        for n in range(order.shape[1]):
            if score[b, n] == NEG_INF:
                continue
            row = spelled[b, n]
            hyps.append(Hypothesis(row[row >= 0].tolist(), float(score[b, n]), float(acoustic[b, n]), float(lm[b, n]), int(words[b, n])))
        results.append(hyps)
    return results


def make_fusion(lm_path: str, tokenizer, unit: str = "auto", device: torch.device | str = "cpu") -> Fusion:
    """Load an ARPA file for a tokenizer: word-level fusion for character models ("auto" picks
    it when the tokenizer is a character one), token-level for anything else."""
    if unit == "auto":
        unit = "word" if getattr(tokenizer, "kind", "") == "char" else "token"
    if unit not in ("word", "token"):
        raise ValueError(f"lm_unit must be 'word', 'token' or 'auto', not {unit!r}")
    lm = NGramLM.from_file(lm_path, device)
    return WordLMFusion(lm, tokenizer.symbols) if unit == "word" else TokenLMFusion(lm, tokenizer.symbols)
