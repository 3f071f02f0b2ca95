"""CTC prefix beam search with optional n-gram LM fusion, vectorized over batch x beam.

The search keeps, per utterance, `beam_size` distinct label prefixes, each with two log
probabilities: p_b (all alignments of the prefix that end in blank) and p_nb (end in its last
label) (Graves 2012, ch. 7; Hannun et al. 2014, "First-pass LVCSR with CTC", alg. 1). At each
frame a prefix either stays (blank, or its last label repeated without a blank between) or
grows by one of the frame's top-k labels; a repeat of the last label only grows the prefix
from p_b, because without a blank between them two equal labels are one. A grown prefix that
equals another prefix still in the beam (l + c == l') is merged into it.

Everything is a tensor of shape (batch, beam) or (batch, beam, k): prefixes are identified by
a 64-bit hash (the polynomial hash of the LM keys), a prefix l + c that is already in the
beam as l' is found by comparing l's hash with l''s parent hash ((batch, beam, beam), not
(batch, beam, k, beam)), selection is one `topk` over the stay and grow candidates, and
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

from asr.decode.lm import NGramLM, hash_step
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

    def __init__(self, lm: NGramLM, symbols: Sequence[str], space_word: str = "|"):
        self.lm = lm
        # label id -> LM word id (<unk> for symbols the LM does not know; blank is never scored);
        # a space label is the LM word `space_word` (ARPA words cannot be blank)
        words = [space_word if s == SPACE else s for s in symbols]
        self.token_words = torch.tensor([lm.word_id(w) for w in words], dtype=torch.long, device=lm.device)

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
    score as <unk>; as soon as an unfinished word stops being the start of any listed word it
    also pays `oov_penalty` (ln units, once), so the beam does not fill up with non-words.

    The LM's words are spelled into a trie of labels held as a (nodes, vocab) table of child
    node ids, so following a label is one gather for the whole batch; node 0 is the root and
    the last node, whose children are all itself, means "not the start of any listed word".
    """

    def __init__(self, lm: NGramLM, symbols: Sequence[str], delimiter: str = SPACE, oov_penalty: float = -10.0):
        if delimiter not in symbols:
            raise ValueError(f"the word delimiter {delimiter!r} is not one of the labels")
        self.lm = lm
        self.oov_penalty = oov_penalty
        self.delimiter = list(symbols).index(delimiter)
        label_of = {s: i for i, s in enumerate(symbols) if i != BLANK_ID}
        children: list[dict[int, int]] = [{}]
        node_word = [lm.unk]
        for word, wid in lm.word_ids.items():
            labels = [label_of.get(c) for c in word]
            if wid in (lm.bos, lm.eos, lm.unk) or not labels or None in labels:
                continue  # no label sequence spells it
            node = 0
            for label in labels:
                if label not in children[node]:
                    children[node][label] = len(children)
                    children.append({})
                    node_word.append(lm.unk)
                node = children[node][label]
            node_word[node] = wid
        self.dead = len(children)  # the node after a label no listed word continues with
        trie = torch.full((len(children) + 1, len(symbols)), self.dead, dtype=torch.long)
        for node, kids in enumerate(children):
            for label, child in kids.items():
                trie[node, label] = child
        self.vocab = len(symbols)
        self.trie = trie.flatten().to(lm.device)  # (nodes + 1) * vocab: child of (node, label) at node * vocab + label
        self.node_word = torch.tensor(node_word + [lm.unk], dtype=torch.long).to(lm.device)  # (nodes + 1,) LM word id

    def to(self, device: torch.device) -> "WordLMFusion":
        self.lm.to(device)
        self.trie, self.node_word = self.trie.to(device), self.node_word.to(device)
        return self

    def init_state(self, batch: int, beam: int) -> State:
        zeros = torch.zeros(batch, beam, dtype=torch.long, device=self.lm.device)
        return {
            "ctx": self.lm.start_state(batch, beam),  # (batch, beam, order-1) LM state before the unfinished word
            "node": zeros,  # trie node of the unfinished word (0: none yet, self.dead: not the start of a listed word)
            "chars": zeros.clone(),  # its length
            "word_logp": torch.zeros(batch, beam, device=self.lm.device),  # ln P_lm(it | ctx) if it ended now
        }

    def candidate_scores(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ends_word = (tokens == self.delimiter) & (state["chars"] > 0)[..., None]  # (batch, beam, k)
        logp = torch.where(ends_word, state["word_logp"][..., None], 0.0)  # (batch, beam, k)
        if self.oov_penalty:
            node = state["node"][..., None]  # (batch, beam, 1)
            child = torch.take(self.trie, node * self.vocab + tokens)  # (batch, beam, k)
            leaves = (node != self.dead) & (child == self.dead) & (tokens != self.delimiter)
            logp = logp + leaves * self.oov_penalty
        return logp, ends_word.to(logp.dtype)

    def advance(self, state: State, tokens: torch.Tensor, grown: torch.Tensor) -> State:
        delim = grown & (tokens == self.delimiter)
        ends_word = delim & (state["chars"] > 0)
        in_word = grown & ~delim
        ctx = state["ctx"]
        word = torch.take(self.node_word, state["node"])[..., None]
        shifted = torch.cat([ctx[..., 1:], word], dim=-1) if ctx.shape[-1] > 1 else word
        ctx = torch.where(ends_word[..., None], shifted, ctx)
        node = torch.where(in_word, torch.take(self.trie, state["node"] * self.vocab + tokens), state["node"]) * ~delim
        chars = (state["chars"] + in_word) * ~delim
        word_logp, _ = self.lm.score(ctx, torch.take(self.node_word, node))
        return {"ctx": ctx, "node": node, "chars": chars, "word_logp": word_logp}

    def final_scores(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        pending = state["chars"] > 0  # (batch, beam) an unfinished word to score first
        _, after = self.lm.score(state["ctx"], torch.take(self.node_word, state["node"]))
        ctx = torch.where(pending[..., None], after, state["ctx"])
        eos = torch.full(pending.shape, self.lm.eos, dtype=torch.long, device=self.lm.device)
        eos_logp, _ = self.lm.score(ctx, eos)
        return state["word_logp"] * pending + eos_logp, pending.to(eos_logp.dtype)


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
    # Past its end an utterance sees frames that are certainly blank: every prefix keeps its
    # total probability and no prefix can grow, so no per-utterance bookkeeping is needed.
    past_end = torch.arange(frames, device=device)[None, :] >= lengths[:, None]  # (batch, frames)
    silent = torch.full((vocab,), NEG_INF, device=device)
    silent[blank] = 0.0
    log_probs = torch.where(past_end[..., None], silent, log_probs)  # (batch, frames, vocab)

    # the frame's candidate labels, for all frames at once: its top-k non-blank labels
    labels_lp = log_probs.clone()
    labels_lp[..., blank] = NEG_INF
    top_lp_all, top_id_all = labels_lp.topk(k, dim=2)  # (batch, frames, k)
    top_lp_all = top_lp_all.masked_fill(top_lp_all < token_min_logp, NEG_INF)
    blank_lp = log_probs[..., blank]  # (batch, frames)

    p_b = torch.full((batch, beam), NEG_INF, device=device)  # (batch, beam)
    p_b[:, 0] = 0.0  # the empty prefix, before any frame
    p_nb = torch.full((batch, beam), NEG_INF, device=device)  # (batch, beam)
    last = torch.full((batch, beam), blank, dtype=torch.long, device=device)  # blank = no label yet
    key = torch.zeros(batch, beam, dtype=torch.long, device=device)  # prefix hash (empty prefix: 0)
    up = torch.ones_like(key)  # hash of the prefix without its last label (1: none, the empty prefix)
    lm_total = torch.zeros(batch, beam, device=device)  # ln P_lm so far
    words = torch.zeros(batch, beam, device=device)  # words scored so far
    state = fusion.init_state(batch, beam) if fusion is not None else {}
    parents = torch.zeros(frames, batch, beam, dtype=torch.long, device=device)  # back-pointers
    emitted = torch.full((frames, batch, beam), -1, dtype=torch.long, device=device)  # label added, -1 none
    # candidates are [beam stays | beam*k grows]; constant parts of that layout:
    slots = torch.arange(beam, device=device)
    cand_parent = torch.cat([slots, slots.repeat_interleave(k)]).expand(batch, -1)  # (batch, beam + beam*k)
    no_label = torch.full((batch, beam), -1, dtype=torch.long, device=device)
    grow_p_b = torch.full((batch, beam * k), NEG_INF, device=device)

    for t in range(frames):
        lp = log_probs[:, t]  # (batch, vocab)
        top_lp, top_id = top_lp_all[:, t], top_id_all[:, t]  # (batch, k)
        total = plus(p_b, p_nb)  # (batch, beam)
        valid = total > NEG_INF  # (batch, beam)
        last_lp = lp.gather(1, last)  # (batch, beam)

        # stay: blank, or the last label again (an empty prefix has p_nb = -inf)
        stay_b = total + blank_lp[:, t, None]  # (batch, beam)
        stay_nb = p_nb + last_lp  # (batch, beam)

        # l' = l + c with both in the beam: l' also gets l's alignments that grow into it.
        # l' is recognized by its parent hash, so this costs (batch, beam, beam), not a k-wide test.
        into = (key[:, :, None] == up[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (batch, l, l')
        c = last[:, None, :]  # (batch, 1, l') the label that makes l into l'
        via = torch.where(c == last[:, :, None], p_b[:, :, None], total[:, :, None]) + last_lp[:, None, :]  # (batch, l, l')
        stay_nb = plus(stay_nb, via.masked_fill(~into, NEG_INF).amax(dim=1))  # at most one l per l': max is the sum
        taken = torch.zeros(batch, beam, vocab, dtype=torch.bool, device=device)  # (batch, l, c): l + c is in the beam
        taken.scatter_(2, c.expand(batch, beam, beam).masked_fill(~into, blank), into)

        # grow: l + c for the frame's top-k labels c (a repeat only from alignments ending in blank)
        repeat = top_id[:, None, :] == last[:, :, None]  # (batch, beam, k)
        grow = torch.where(repeat, p_b[..., None], total[..., None]) + top_lp[:, None, :]  # (batch, beam, k)
        grow = grow.masked_fill(taken.gather(2, top_id[:, None, :].expand(batch, beam, k)), NEG_INF).flatten(1)

        # pick the best `beam` of [stays | grows]
        acoustic = torch.cat([plus(stay_b, stay_nb), grow], dim=1)  # (batch, beam + beam*k)
        if fusion is not None:
            grow_lm, grow_words = fusion.candidate_scores(state, top_id[:, None, :].expand(batch, beam, k))
            cand_lm = torch.cat([lm_total, (lm_total[..., None] + grow_lm).flatten(1)], dim=1)
            cand_words = torch.cat([words, (words[..., None] + grow_words).flatten(1)], dim=1)
            _, pick = (acoustic + lm_weight * cand_lm + word_bonus * cand_words).topk(beam, dim=1)  # (batch, beam)
            lm_total, words = cand_lm.gather(1, pick), cand_words.gather(1, pick)
        else:
            _, pick = acoustic.topk(beam, dim=1)  # (batch, beam)
        parent = cand_parent.gather(1, pick)  # (batch, beam)
        label = torch.cat([no_label, top_id.repeat(1, beam)], dim=1).gather(1, pick)  # (batch, beam), -1 = stayed
        is_grow = label >= 0
        p_b = torch.cat([stay_b, grow_p_b], dim=1).gather(1, pick)
        p_nb = torch.cat([stay_nb, grow], dim=1).gather(1, pick)
        parent_key = key.gather(1, parent)
        last = torch.where(is_grow, label, last.gather(1, parent))
        up = torch.where(is_grow, parent_key, up.gather(1, parent))
        key = torch.where(is_grow, hash_step(parent_key, label), parent_key)
        if fusion is not None:
            state = fusion.advance({name: _gather(x, parent) for name, x in state.items()}, last, is_grow)
        parents[t] = parent
        emitted[t] = label

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
