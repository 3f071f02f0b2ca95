"""CTC prefix beam search with optional n-gram LM fusion, vectorized over the live hypotheses of
a whole batch.

The search keeps, per utterance, up to `beam_size` distinct label prefixes, each with two log
probabilities: p_b (all alignments of the prefix that end in blank) and p_nb (end in its last
label) (Graves 2012, ch. 7; Hannun et al. 2014, "First-pass LVCSR with CTC", alg. 1). At each
frame a prefix either stays (blank, or its last label repeated without a blank between) or
grows by one of the frame's candidate labels; a repeat of the last label only grows the prefix
from p_b, because without a blank between them two equal labels are one. A grown prefix that
equals another prefix still in the beam (l + c == l') is merged into it.

The hypotheses of all utterances live in one flat list (tensors of shape (hyps,), grouped by
utterance, best first), not a dense (batch, beam) grid: a peaky CTC model leaves most
utterances with a few live prefixes and a label or two worth trying per frame, and the flat
list only pays for those. Each frame:
 1. every hypothesis stays, and grows by the frame's candidate labels (its `token_top_k` most
    probable, those at least `token_min_logp`); grows that come out at -inf are dropped;
 2. a grown prefix already in the list is found by its 64-bit hash (the hash of the empty
    prefix differs per utterance, so one sorted search covers the batch) and merged into it;
 3. the LM scores only the grows that finish a word (or every grow, for token-level fusion);
 4. each utterance keeps its best `beam_size` candidates within `beam_threshold` of its best
    (one sort of all candidates by (utterance, -score)).
Prefixes are spelled out at the end from per-frame back-pointers. The code is the same on CPU
and CUDA; the flat list costs a few small device-to-host reads per frame (its new sizes).

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
_UTT_MUL = 0x2545F4914F6CDD1D  # odd; spreads utterance indices into distinct empty-prefix hashes


@dataclass
class Hypothesis:
    ids: list[int]  # labels, blanks and repeats removed
    score: float  # acoustic + lm_weight * lm + word_bonus * num_words
    acoustic: float  # ln P_ctc(ids | audio), summed over alignments (or the best one, merge="max")
    lm: float  # ln P_lm of the words, </s> included (0 without an LM)
    num_words: int  # words (or tokens) the LM scored


class TokenLMFusion:
    """Token-level fusion: every label is an LM word (its symbol string), e.g. a phone n-gram.
    Works for any tokenizer: give it the tokenizer's symbols (index = label id).

    State of a hypothesis: one long row, the LM state (its last order-1 LM words)."""

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

    def init_state(self, hyps: int) -> torch.Tensor:
        return self.lm.start_state(hyps)  # (hyps, order-1)

    def grow(self, state: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hypotheses in `state` (grows, S) each growing by one of `labels` (grows,) ->
        LM ln prob (grows,), words added (grows,), their new state (grows, S)."""
        logp, after = self.lm.score(state, self.token_words.take(labels))
        return logp, torch.ones_like(logp), after

    def final_scores(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eos = torch.full(state.shape[:-1], self.lm.eos, dtype=torch.long, device=self.lm.device)
        logp, _ = self.lm.score(state, eos)
        return logp, torch.zeros_like(logp)


class WordLMFusion:
    """Word-level fusion for character models: a word is scored by the LM when the delimiter
    label (space) ends it, and the last word plus </s> at the end. Words the LM does not list
    score as <unk>; as soon as an unfinished word stops being the start of any listed word it
    also pays `oov_penalty` (ln units, once), so the beam does not fill up with non-words.

    The LM's words are spelled into a trie of labels. Per (trie node, label) three tables
    answer everything the search asks, each in one gather for the whole batch: the node reached
    (the delimiter leads back to the root), whether the label ends a word, and the penalty it
    pays. Node 0 is the root; the last node, whose children are all itself, means "not the
    start of any listed word".

    State of a hypothesis: one long row, [LM state before the unfinished word (order-1 words),
    trie node of the unfinished word].
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
        dead = len(children)  # the node after a label no listed word continues with
        trie = torch.full((dead + 1, len(symbols)), dead, dtype=torch.long)
        for node, kids in enumerate(children):
            for label, child in kids.items():
                trie[node, label] = child
        trie[:, self.delimiter] = 0  # a delimiter ends the word: the next one starts at the root
        ends_word = torch.zeros(dead + 1, len(symbols), dtype=torch.bool)
        ends_word[1:, self.delimiter] = True  # a delimiter after at least one label of a word
        penalty = torch.zeros(dead + 1, len(symbols))
        penalty[:dead] = (trie[:dead] == dead) * oov_penalty  # the label leaves the listed words
        self.vocab = len(symbols)
        # (nodes + 1) * vocab tables, entry node * vocab + label
        self.trie = trie.flatten().to(lm.device)
        self.ends_word = ends_word.flatten().to(lm.device)
        self.penalty = penalty.flatten().to(lm.device)
        self.node_word = torch.tensor(node_word + [lm.unk], dtype=torch.long).to(lm.device)  # (nodes + 1,) LM word id

    def to(self, device: torch.device) -> "WordLMFusion":
        self.lm.to(device)
        for name in ("trie", "ends_word", "penalty", "node_word"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def init_state(self, hyps: int) -> torch.Tensor:
        return torch.cat([self.lm.start_state(hyps), torch.zeros(hyps, 1, dtype=torch.long, device=self.lm.device)], dim=1)

    def grow(self, state: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hypotheses in `state` (grows, S) each growing by one of `labels` (grows,) ->
        LM ln prob (grows,), words added (grows,), their new state (grows, S).
        The LM is only asked about the grows that finish a word."""
        entry = state[:, -1] * self.vocab + labels
        ends_word = self.ends_word.take(entry)
        logp = self.penalty.take(entry)
        after = state.clone()
        after[:, -1] = self.trie.take(entry)
        enders = ends_word.nonzero().squeeze(1)
        if enders.numel():
            ender_state = state.index_select(0, enders)
            word_logp, ctx = self.lm.score(ender_state[:, :-1], self.node_word.take(ender_state[:, -1]))
            logp.index_add_(0, enders, word_logp)
            after[enders, :-1] = ctx
        return logp, ends_word.to(logp.dtype), after

    def final_scores(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pending = state[:, -1] != 0  # (hyps,) an unfinished word to score first
        word_logp, after = self.lm.score(state[:, :-1], self.node_word.take(state[:, -1]))
        ctx = torch.where(pending[:, None], after, state[:, :-1])
        eos = torch.full(pending.shape, self.lm.eos, dtype=torch.long, device=self.lm.device)
        eos_logp, _ = self.lm.score(ctx, eos)
        return word_logp * pending + eos_logp, pending.to(eos_logp.dtype)


Fusion = TokenLMFusion | WordLMFusion


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


def _best_per_utterance(score: torch.Tensor, utt: torch.Tensor, n: int, threshold: float = math.inf) -> torch.Tensor:
    """Indices of the items (score (items,), utt (items,)) that are among their utterance's `n`
    best, finite and within `threshold` of its best; grouped by utterance, best first.

    One sort by (utterance, -score); an item is in its utterance's top n when the item n places
    before it belongs to another utterance."""
    order = torch.argsort(score.double().neg_().clamp_(max=1e7).add_(utt, alpha=1e8), stable=True)
    s_sorted = score.index_select(0, order)
    u_sorted = utt.index_select(0, order)
    first = torch.ones_like(u_sorted, dtype=torch.bool)
    first[1:] = u_sorted[1:] != u_sorted[:-1]
    head = torch.where(first, torch.arange(order.shape[0], device=score.device), 0).cummax(0).values  # where the utterance's run starts
    keep = (s_sorted >= s_sorted.index_select(0, head) - threshold) & (s_sorted > NEG_INF)
    keep &= torch.cat([u_sorted.new_full((n,), -1), u_sorted])[: order.shape[0]] != u_sorted
    return order[keep]


@torch.inference_mode()
def decode_beam(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    beam_size: int = 16,
    token_top_k: int = 16,
    token_min_logp: float = NEG_INF,
    beam_threshold: float = math.inf,
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
    token_min_logp: and only those with log prob at least this;
    beam_threshold: drop prefixes whose score is more than this below the utterance's best;
    blank_skip: frames whose blank probability exceeds it are skipped after the first of a run
    (1.0 = never); merge: "sum" adds the probabilities of alignments of the same prefix (prefix
    search), "max" keeps the best one (Viterbi; with beam 1 and no LM this is exactly greedy).
    """
    if merge not in ("sum", "max"):
        raise ValueError(f"merge must be 'sum' or 'max', not {merge!r}")
    if beam_size < 1 or token_top_k < 1:
        raise ValueError("beam_size and token_top_k must be at least 1")
    if not beam_threshold > 0:
        raise ValueError(f"beam_threshold must be positive, not {beam_threshold}")
    plus = torch.logaddexp if merge == "sum" else torch.maximum
    device = log_probs.device
    log_probs = log_probs.float()
    lengths = lengths.to(device)
    if blank_skip < 1.0:
        log_probs, lengths = skip_blank_frames(log_probs, lengths, blank_skip, blank)
    batch, frames, vocab = log_probs.shape
    k = min(token_top_k, vocab - 1)
    # Past its end an utterance sees frames that are certainly blank: every prefix keeps its
    # total probability and no prefix can grow, so no per-utterance bookkeeping is needed.
    past_end = torch.arange(frames, device=device)[None, :] >= lengths[:, None]  # (batch, frames)
    silent = torch.full((vocab,), NEG_INF, device=device)
    silent[blank] = 0.0
    log_probs = torch.where(past_end[..., None], silent, log_probs)  # (batch, frames, vocab)

    # the frame's candidate labels, for all frames at once: its top-k non-blank labels
    labels_lp = log_probs.clone()
    labels_lp[..., blank] = NEG_INF
    top_lp, top_id = labels_lp.topk(k, dim=2)  # (batch, frames, k)
    top_lp = top_lp.masked_fill(top_lp < token_min_logp, NEG_INF)
    frame_lp = torch.cat([log_probs[..., blank, None], top_lp], dim=2).transpose(0, 1).contiguous()  # (frames, batch, 1 + k)
    top_id = top_id.transpose(0, 1).contiguous()  # (frames, batch, k)
    all_lp = log_probs.transpose(0, 1).reshape(frames, batch * vocab)  # (frames, batch * vocab)

    # The hypotheses, grouped by utterance, best first, as two matrices: hf (hyps, 4) float
    # [p_b, p_nb, ln P_lm so far, words scored so far] and hi (hyps, 3 + S) long [utterance,
    # last label, prefix hash, fusion state (S columns)]. One per utterance to start: the empty
    # prefix (last label: blank), whose hash differs per utterance, so that one sorted search
    # finds a prefix anywhere in the batch.
    utt = torch.arange(batch, device=device)
    hf = torch.zeros(batch, 4, device=device)
    hf[:, 1] = NEG_INF
    hi = torch.stack([utt, torch.full_like(utt, blank), utt * _UTT_MUL], dim=1)
    if fusion is not None:
        hi = torch.cat([hi, fusion.init_state(batch)], dim=1)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # per frame: (parent hyp, label added or -1)
    weights = torch.tensor([lm_weight, word_bonus], device=device)
    # extra long columns of [hyps | grows]: (parent hyp, label added); the hyps' (self, -1)
    stay_extra = torch.stack([torch.arange(batch * beam_size, device=device), torch.full((batch * beam_size,), -1, device=device)], dim=1)
    trash = torch.full((1,), NEG_INF, device=device)

    for t in range(frames):
        num = hi.shape[0]
        utt, last, key = hi[:, 0], hi[:, 1], hi[:, 2]
        p_b, p_nb = hf[:, 0], hf[:, 1]
        total = plus(p_b, p_nb)  # (hyps,)
        lp = frame_lp[t].index_select(0, utt)  # (hyps, 1 + k): blank, then the candidate labels
        stay_b = total + lp[:, 0]
        stay_nb = p_nb + all_lp[t].take(utt * vocab + last)  # an empty prefix has p_nb = -inf

        # grow: hyp + c for the frame's candidate labels c (a repeat only from alignments ending in blank)
        cand = top_id[t].index_select(0, utt)  # (hyps, k)
        grow = torch.where(cand == last[:, None], p_b[:, None], total[:, None]).add_(lp[:, 1:])
        flat = (grow > NEG_INF).view(-1).nonzero().squeeze(1)  # (grows,) the finite ones
        g_parent = torch.div(flat, k, rounding_mode="floor")
        g_label = cand.view(-1).index_select(0, flat)
        g_nb = grow.view(-1).index_select(0, flat)
        g_i = hi.index_select(0, g_parent)  # (grows, 3 + S), the parents' columns for now
        g_key = hash_step(g_i[:, 2], g_label)

        # a grown prefix already in the list: its alignments join that hypothesis's p_nb (at most
        # one grow per prefix: it has one parent and one last label), and it is no new candidate
        sorted_key, by_key = key.sort()
        at = by_key.index_select(0, torch.searchsorted(sorted_key, g_key).clamp_(max=max(num - 1, 0)))
        dup = key.index_select(0, at) == g_key
        into = torch.where(dup, at, num)  # slot `num` is a trash slot for the others
        stay_nb = torch.cat([stay_nb, trash])
        stay_nb.scatter_(0, into, plus(stay_nb.index_select(0, into), g_nb))

        # candidates [hyps | grows]: float and long columns, and their total scores
        g_f = hf.index_select(0, g_parent)
        g_f[:, 0] = NEG_INF
        g_f[:, 1] = g_nb.masked_fill_(dup, NEG_INF)
        g_i[:, 1] = g_label
        g_i[:, 2] = g_key
        if fusion is not None:
            d_lm, d_words, g_i[:, 3:] = fusion.grow(g_i[:, 3:], g_label)
            g_f[:, 2] += d_lm
            g_f[:, 3] += d_words
        hf[:, 0] = stay_b
        hf[:, 1] = stay_nb[:num]
        c_f = torch.cat([hf, g_f])  # (cands, 4)
        c_i = torch.cat([torch.cat([hi, stay_extra[:num]], dim=1), torch.cat([g_i, torch.stack([g_parent, g_label], dim=1)], dim=1)])
        score = plus(c_f[:, 0], c_f[:, 1]) + c_f[:, 2:] @ weights  # (cands,)

        # each utterance keeps its best `beam_size` within `beam_threshold` of its best
        pick = _best_per_utterance(score, c_i[:, 0], beam_size, beam_threshold)  # grouped by utterance, best first

        hf = c_f.index_select(0, pick)
        c_i = c_i.index_select(0, pick)
        hi, parent, label = c_i[:, :-2], c_i[:, -2], c_i[:, -1]
        history.append((parent, label))

    utt = hi[:, 0]
    acoustic = plus(hf[:, 0], hf[:, 1])  # (hyps,)
    lm_total, words = hf[:, 2], hf[:, 3]
    if fusion is not None:
        final_lm, final_words = fusion.final_scores(hi[:, 3:])
        lm_total, words = lm_total + final_lm, words + final_words
    score = acoustic + lm_weight * lm_total + word_bonus * words
    return _backtrack(history, utt, batch, nbest, [score, acoustic, lm_total, words])


def _backtrack(history: list[tuple[torch.Tensor, torch.Tensor]], utt: torch.Tensor, batch: int, nbest: int, values: list[torch.Tensor]) -> list[list[Hypothesis]]:
    """Spell out the `nbest` best final hypotheses of each utterance from the per-frame
    back-pointers (one device transfer)."""
    chosen = _best_per_utterance(values[0], utt, nbest)  # (chosen,)
    labels = []
    hyp = chosen
    for parent, label in reversed(history):
        labels.append(label[hyp])
        hyp = parent[hyp]
    spelled = torch.stack(labels[::-1], dim=1).cpu() if labels else torch.empty(chosen.shape[0], 0, dtype=torch.long)
    owner = utt[chosen].tolist()
    score, acoustic, lm, words = (v[chosen].tolist() for v in values)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for i, b in enumerate(owner):
        row = spelled[i]
        results[b].append(Hypothesis(row[row >= 0].tolist(), score[i], acoustic[i], lm[i], int(words[i])))
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
