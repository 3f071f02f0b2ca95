"""CTC prefix beam search with optional n-gram LM fusion, vectorized over the live hypotheses of
a whole batch.

The search keeps, per utterance, up to `beam_size` distinct label prefixes, each with two log
probabilities: p_b (all alignments of the prefix that end in blank) and p_nb (end in its last
label) (Graves 2012, ch. 7; Hannun et al. 2014, "First-pass LVCSR with CTC", alg. 1). At each
frame a prefix either stays (blank, or its last label repeated without a blank between) or
grows by one of the frame's candidate labels; a repeat of the last label only grows the prefix
from p_b, because without a blank between them two equal labels are one. A grown prefix that
equals another prefix still in the beam (l + c == l') is merged into it.

The hypotheses of all utterances live in one flat list (grouped by utterance, best first), not
a dense (batch, beam) grid: a peaky CTC model leaves most utterances with a few live prefixes
and a label or two worth trying per frame, and the flat list only pays for those. Utterances are
taken longest first, so the ones that have ended are the list's tail and leave it by slicing.
Each frame:
 1. every hypothesis stays, and grows by the frame's candidate labels (its `token_top_k` most
    probable, those at least `token_min_logp`, within `token_cum_prob`, found for all frames at
    once); grows that come out at -inf are dropped;
 2. a grown prefix already in the list is found by its 64-bit hash (the hash of the empty
    prefix differs per utterance, so the list's hashes, sorted once, serve the whole batch)
    and merged into it;
 3. the LM scores only the grows that finish a word (or every grow, for token-level fusion);
 4. each utterance keeps its best `beam_size` candidates within `beam_threshold` of its best
    (one sort of all candidates by (utterance, -score)).
Prefixes are spelled out at the end from per-frame back-pointers. The flat list costs a few
small device-to-host reads per frame (its new sizes), which a GPU pays for in idle time; on
CUDA `decode_beam` therefore runs the same search on a dense (utterance, beam) grid, replayed
as a CUDA graph (`asr.decode.dense`), or, with layout="triton", as one Triton kernel that runs
every frame of an utterance in one program (`asr.decode.triton_beam`; `layout=` chooses). On a
CPU the ~130 ops a frame cost 1-3 us each, mostly overhead, so there `decode_beam` runs this
same search compiled by numba, a loop per utterance (`asr.decode.numba_beam`), when numba
imports; the flat list is the reference the other layouts are tested against.

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
LAYOUTS = ("auto", "flat", "dense", "triton", "numba")  # decode_beam's layout (see its docstring)


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

    State of a hypothesis: one long column, the LM state.

    The labels are few, so when the LM's contexts times the labels are at most `table_limit`,
    every (state, label) is scored once here, into two tables the search reads with one gather
    each; a larger LM is asked at every step.
    """

    def __init__(self, lm: NGramLM, symbols: Sequence[str], space_word: str = "|", table_limit: int = 1 << 22):
        self.lm = lm
        # label id -> LM word id (<unk> for symbols the LM does not know; blank is never scored);
        # a space label is the LM word `space_word` (ARPA words cannot be blank)
        words = [space_word if s == SPACE else s for s in symbols]
        self.token_words = torch.tensor([lm.word_id(w) for w in words], dtype=torch.long, device=lm.device)
        self.vocab = len(symbols)
        # per label, the most a grow by it can add to the LM score (an LM log prob is <= 0) and
        # to the words scored (see decode_beam's early pruning)
        self.label_gain = torch.zeros(self.vocab, device=lm.device)
        self.label_words = torch.ones(self.vocab, device=lm.device)
        self.table_logp = self.table_next = None  # (contexts * vocab,) entry state * vocab + label
        contexts = lm.num_contexts
        if contexts * self.vocab <= table_limit:
            chunk = max((1 << 16) // self.vocab, 1)  # states per call: bounds the lookup's memory
            logps, nexts = [], []
            for first in range(0, contexts, chunk):
                states = torch.arange(first, min(first + chunk, contexts), device=lm.device)
                logp, after = lm.score(states.repeat_interleave(self.vocab), self.token_words.repeat(len(states)))
                logps.append(logp)
                nexts.append(after)
            self.table_logp, self.table_next = torch.cat(logps), torch.cat(nexts)

    def to(self, device: torch.device) -> "TokenLMFusion":
        self.lm.to(device)
        for name in ("token_words", "label_gain", "label_words", "table_logp", "table_next"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def init_state(self, hyps: int) -> torch.Tensor:
        return self.lm.start_state(hyps, 1)

    def grow_(self, state: torch.Tensor, labels: torch.Tensor, dense: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Hypotheses in `state` (grows, S) each growing by one of `labels` (grows,) -> LM ln
        prob (grows,), words added (grows,); `state` becomes theirs after the grow, in place.
        (`dense`: see WordLMFusion.grow_; every grow is scored here anyway.)"""
        if self.table_logp is None:
            logp, after = self.lm.score(state[:, 0], self.token_words.index_select(0, labels))
        else:
            entry = torch.add(labels, state[:, 0], alpha=self.vocab)
            logp, after = self.table_logp.index_select(0, entry), self.table_next.index_select(0, entry)
        state[:, 0] = after
        return logp, torch.ones_like(logp)

    def final_scores(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eos = torch.full(state.shape[:-1], self.lm.eos, dtype=torch.long, device=self.lm.device)
        logp, _ = self.lm.score(state.view(-1), eos)
        return logp, torch.zeros_like(logp)


class WordLMFusion:
    """Word-level fusion for character models: a word is scored by the LM when the delimiter
    label (space) ends it, and the last word plus </s> at the end. Words the LM does not list
    score as <unk> and pay `oov_penalty` (ln units) once: as soon as an unfinished word stops
    being the start of any listed word (so the beam does not fill up with non-words), or when
    it ends as the start of a listed word that is not one itself.

    With `lookahead` an unfinished word already carries the unigram ln P of the best listed word
    it can still become (flashlight's "max smearing"), updated label by label and swapped for
    the word's real LM score when it ends. A prefix that has just paid for a word then competes
    fairly with one in the middle of a word, so a tight `beam_threshold` loses less; the total
    LM score of a finished hypothesis is the same with or without it.

    The LM's words are spelled into a trie of labels. Per (trie node, label) three tables
    answer everything the search asks, each in one gather for the whole batch: the node reached
    (the delimiter leads back to the root), whether the label ends a word, and what it pays now
    (OOV penalty, change of lookahead). Node 0 is the root; the last node, whose children are
    all itself, means "not the start of any listed word".

    State of a hypothesis: two long columns, [LM state before the unfinished word, trie node of
    the unfinished word].
    """

    def __init__(self, lm: NGramLM, symbols: Sequence[str], delimiter: str = SPACE, oov_penalty: float = -10.0, lookahead: bool = True):
        """lm: the word n-gram; symbols: the tokenizer's labels (index = label id)."""
        if delimiter not in symbols:
            raise ValueError(f"the word delimiter {delimiter!r} is not one of the labels")
        if oov_penalty > 0:
            raise ValueError(f"oov_penalty is a penalty (ln units, <= 0), not {oov_penalty}")
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
        # lookahead per node: the best unigram ln P below it (<unk>'s for the dead node, 0 at the root)
        ahead = [0.0] * (dead + 1)
        if lookahead:
            unigram = lm.unigram_logp()
            for node in range(dead - 1, 0, -1):  # a child is numbered after its parent
                own = unigram[node_word[node]] if node_word[node] != lm.unk else NEG_INF
                ahead[node] = max([own] + [ahead[child] for child in children[node].values()])
            ahead[dead] = unigram[lm.unk]
        look = torch.tensor(ahead)
        penalty = torch.zeros(dead + 1, len(symbols))
        penalty[:dead] = (trie[:dead] == dead) * oov_penalty  # the label leaves the listed words
        penalty += look[trie] - look[:, None]
        penalty[:, self.delimiter] = 0.0  # ending a word: see end_cost
        # per node, what ending the word there adds to the LM's score for it: the OOV penalty for
        # the start of a listed word that is no word itself (the dead node has paid already),
        # less the lookahead paid in advance
        unlisted = [0.0] + [oov_penalty if w == lm.unk else 0.0 for w in node_word[1:]] + [0.0]
        self.end_cost = (torch.tensor(unlisted) - look).to(lm.device)
        self.vocab = len(symbols)
        # per label, the most a grow by it can add to the LM score and to the words scored (see
        # decode_beam's early pruning): within a word, the penalty (a lookahead only falls); a
        # finished word's LM score may beat its lookahead by any amount, without lookahead
        # it is a log prob (<= 0)
        label_gain = penalty.max(dim=0).values
        label_gain[self.delimiter] = math.inf if lookahead else 0.0
        self.label_gain = label_gain.to(lm.device)
        self.label_words = (torch.arange(len(symbols)) == self.delimiter).float().to(lm.device)
        # (nodes + 1) * vocab tables, entry node * vocab + label
        self.trie = trie.flatten().to(lm.device)
        self.ends_word = ends_word.flatten().to(lm.device)
        self.penalty = penalty.flatten().to(lm.device)
        self.node_word = torch.tensor(node_word + [lm.unk], dtype=torch.long).to(lm.device)  # (nodes + 1,) LM word id

    def to(self, device: torch.device) -> "WordLMFusion":
        self.lm.to(device)
        for name in ("trie", "ends_word", "penalty", "node_word", "end_cost", "label_gain", "label_words"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def init_state(self, hyps: int) -> torch.Tensor:
        return torch.stack([self.lm.start_state(hyps), torch.zeros(hyps, dtype=torch.long, device=self.lm.device)], dim=1)

    def grow_(self, state: torch.Tensor, labels: torch.Tensor, dense: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Hypotheses in `state` (grows, S) each growing by one of `labels` (grows,) -> LM ln
        prob (grows,), words added (grows,); `state` becomes theirs after the grow, in place.
        The LM is only asked about the grows that finish a word; with `dense`, about every grow
        (the answers of the others are dropped), so that the shapes do not depend on the data."""
        entry = torch.add(labels, state[:, 1], alpha=self.vocab)
        ends_word = self.ends_word.index_select(0, entry)
        logp = self.penalty.index_select(0, entry)
        if dense:
            word_logp, ctx = self._end_word(state)
            logp += word_logp.masked_fill_(~ends_word, 0.0)
            state[:, 0] = torch.where(ends_word, ctx, state[:, 0])
        else:
            enders = ends_word.nonzero().squeeze(1)
            if enders.numel():
                word_logp, ctx = self._end_word(state.index_select(0, enders))
                logp.index_add_(0, enders, word_logp)
                state[:, 0].index_copy_(0, enders, ctx)
        state[:, 1] = self.trie.index_select(0, entry)
        return logp, ends_word.to(logp.dtype)

    def _end_word(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hypotheses in `state` (hyps, S) ending their unfinished word -> what that adds to the
        LM score (the word's ln P, OOV penalty and lookahead settled) and the LM state after it."""
        node = state[:, 1]
        word_logp, ctx = self.lm.score(state[:, 0], self.node_word.index_select(0, node))
        return word_logp + self.end_cost.index_select(0, node), ctx

    def final_scores(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pending = state[:, 1] != 0  # (hyps,) an unfinished word to score first
        word_logp, after = self._end_word(state)
        ctx = torch.where(pending, after, state[:, 0])
        eos = torch.full(pending.shape, self.lm.eos, dtype=torch.long, device=self.lm.device)
        eos_logp, _ = self.lm.score(ctx, eos)
        return word_logp * pending + eos_logp, pending.to(eos_logp.dtype)


Fusion = TokenLMFusion | WordLMFusion

# The kinds of fusion a compiled layout (numba, triton) tells apart when it scores a grow
NO_FUSION, WORD_FUSION, TOKEN_TABLES, TOKEN_LM = 0, 1, 2, 3


def fusion_tables(fusion: Fusion | None, device: torch.device) -> tuple[int, NGramLM | None, list[torch.Tensor], list[torch.Tensor]]:
    """What a compiled layout needs of a fusion: its kind, its n-gram, the WordLMFusion tables
    [trie, ends_word (viewed as int8, no copy), penalty, node_word, end_cost] and the
    TokenLMFusion ones [token_words, table_logp, table_next]; a kind's unused tables are
    1-element dummies of the same dtypes (so each layout compiles one version of its search)."""
    f32, i64 = torch.zeros(1, device=device), torch.zeros(1, dtype=torch.long, device=device)
    word = [i64, torch.zeros(1, dtype=torch.int8, device=device), f32, i64, f32]
    token = [i64, f32, i64]
    if fusion is None:
        return NO_FUSION, None, word, token
    if isinstance(fusion, WordLMFusion):
        word = [fusion.trie, fusion.ends_word.view(torch.int8), fusion.penalty, fusion.node_word, fusion.end_cost]
        return WORD_FUSION, fusion.lm, word, token
    if isinstance(fusion, TokenLMFusion):
        if fusion.table_logp is not None:
            return TOKEN_TABLES, fusion.lm, word, [i64, fusion.table_logp, fusion.table_next]
        return TOKEN_LM, fusion.lm, word, [fusion.token_words, f32, i64]
    raise TypeError(f"a compiled beam search knows WordLMFusion and TokenLMFusion, not {type(fusion).__name__}")


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


def _best_per_utterance(score: torch.Tensor, utt: torch.Tensor, utterances: int, n: int, threshold: float = math.inf) -> torch.Tensor:
    """Indices of the items (score (items,) float32, utt (items,) in 0 .. utterances-1) that are
    among their utterance's `n` best, finite and within `threshold` of its best; grouped by
    utterance, best first, ties in item order.

    One stable sort by (utterance, -score), on int64 keys: the utterance in the high 32 bits,
    the score's float32 bits in the low, made to rise with the score (a negative float's
    magnitude bits are flipped). An item is in its utterance's top n when the item n places
    before it belongs to another utterance."""
    bits = score.view(torch.int32)
    order = torch.argsort((utt << 32).sub_(bits ^ ((bits >> 31) & 0x7FFFFFFF)), stable=True)
    best = score.new_full((utterances,), NEG_INF).scatter_reduce_(0, utt, score, "amax")
    floor = best.sub_(threshold).clamp_(min=torch.finfo(score.dtype).min)  # finite, so -inf items fail it
    keep = (score >= floor.index_select(0, utt)).index_select(0, order)
    if n < order.shape[0]:
        u_sorted = utt.index_select(0, order)
        keep[n:] &= u_sorted[n:] != u_sorted[:-n]
    return order.masked_select(keep)


@torch.inference_mode()
def decode_beam(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    beam_size: int = 16,
    token_top_k: int = 16,
    token_min_logp: float = NEG_INF,
    token_cum_prob: float = 1.0,
    beam_threshold: float = math.inf,
    blank_skip: float = 1.0,
    fusion: Fusion | None = None,
    lm_weight: float = 0.5,
    word_bonus: float = 0.0,
    nbest: int = 1,
    merge: str = "sum",
    blank: int = BLANK_ID,
    layout: str = "auto",
) -> list[list[Hypothesis]]:
    """Prefix beam search over a batch; returns the `nbest` best hypotheses per utterance, best first.

    log_probs (batch, frames, vocab) log-softmax output, lengths (batch,).
    token_top_k: labels tried per frame (the frame's most probable non-blank labels);
    token_min_logp: and only those with log prob at least this;
    token_cum_prob: and only the frame's most probable labels (blank included) whose probabilities
    first add up to this (ctcdecode's cutoff_prob; 1.0 = all);
    beam_threshold: drop prefixes whose score is more than this below the utterance's best;
    blank_skip: frames whose blank probability exceeds it are skipped after the first of a run
    (1.0 = never); merge: "sum" adds the probabilities of alignments of the same prefix (prefix
    search), "max" keeps the best one (Viterbi; with beam 1 and no LM this is exactly greedy);
    layout: "flat" (this function's list of live hypotheses), "dense" (the same search on a
    fixed (utterance, beam) grid, replayed as a CUDA graph on a GPU: `asr.decode.dense`),
    "triton" (the dense grid's search as one Triton kernel, a program per utterance: CUDA
    only, or Triton's interpreter; `asr.decode.triton_beam`), "numba" (the flat list's search
    compiled by numba, a loop per utterance: CPU only; `asr.decode.numba_beam`), or "auto":
    dense on CUDA, numba on the CPU (the flat list where numba does not import).
    """
    if merge not in ("sum", "max"):
        raise ValueError(f"merge must be 'sum' or 'max', not {merge!r}")
    if not 0.0 < token_cum_prob <= 1.0:
        raise ValueError(f"token_cum_prob must be in (0, 1], not {token_cum_prob}")
    if beam_size < 1 or token_top_k < 1:
        raise ValueError("beam_size and token_top_k must be at least 1")
    if not beam_threshold > 0:
        raise ValueError(f"beam_threshold must be positive, not {beam_threshold}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if log_probs.shape[0] == 0:
        return []
    plus = torch.logaddexp if merge == "sum" else torch.maximum
    device = log_probs.device
    log_probs = log_probs.float()
    lengths = lengths.to(device)
    if blank_skip < 1.0:
        log_probs, lengths = skip_blank_frames(log_probs, lengths, blank_skip, blank)
    if layout == "auto":
        layout = "dense" if device.type == "cuda" else ("numba" if _have_numba() else "flat")
    if layout != "flat":
        # the other layouts: the same search, arguments checked here, blank frames skipped
        if layout == "triton":
            from asr.decode.triton_beam import decode_beam_triton as search
        elif layout == "numba":
            from asr.decode.numba_beam import decode_beam_numba as search
        else:
            from asr.decode.dense import decode_beam_dense as search
        return search(
            log_probs, lengths, beam_size=beam_size, token_top_k=token_top_k, token_min_logp=token_min_logp,
            token_cum_prob=token_cum_prob, beam_threshold=beam_threshold, fusion=fusion, lm_weight=lm_weight,
            word_bonus=word_bonus, nbest=nbest, merge=merge, blank=blank,
        )
    batch, frames, vocab = log_probs.shape
    # Longest utterance first: the hypotheses are grouped by utterance, so the utterances that
    # have ended are a tail of the list, and leave it by slicing.
    by_length = torch.argsort(lengths, descending=True, stable=True)
    log_probs, lengths = log_probs.index_select(0, by_length), lengths.index_select(0, by_length)
    ends = lengths.tolist()  # per utterance (longest first), the frame at which it leaves
    cand_id, cand_lp = _frame_candidates(log_probs, lengths, token_top_k, token_min_logp, blank, token_cum_prob)  # (batch * frames, k)
    k = cand_id.shape[1]
    flat_lp = log_probs.reshape(-1)  # entry (utterance * frames + t) * vocab + label
    blank_lp = log_probs[:, :, blank].reshape(-1)  # entry utterance * frames + t

    # The hypotheses, grouped by utterance, best first: hf (4, hyps) float, rows [p_b, p_nb,
    # ln P_lm so far, words scored so far], and hi (hyps, 3 + S) long, columns [utterance, last
    # label, prefix hash, fusion state (S columns)]. One per utterance to start: the empty prefix
    # (last label: blank), whose hash differs per utterance, so that equal hashes mean equal
    # prefixes of one utterance anywhere in the batch.
    utt = torch.arange(batch, device=device)
    hf = torch.zeros(4, batch, device=device)
    hf[1] = NEG_INF
    hi = torch.stack([utt, torch.full_like(utt, blank), utt * _UTT_MUL], dim=1)
    if fusion is not None:
        hi = torch.cat([hi, fusion.init_state(batch)], dim=1)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # per frame: (parent hyp, label added or -1)
    ended: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (frames seen, place in the list, hf, hi) of utterances that ended
    weights = torch.tensor([lm_weight, word_bonus], device=device)
    bound, early_pruning = fusion_bound(fusion, vocab, lm_weight, word_bonus, beam_threshold, device)
    lowest = torch.finfo(hf.dtype).min
    stay_parent = torch.arange(batch * beam_size, device=device)
    stay_label = torch.full((batch * beam_size,), -1, device=device)
    live = batch  # utterances 0 .. live-1 still have frames

    for t in range(frames + 1):
        if live and ends[live - 1] <= t:  # utterances ending here leave the list, hypotheses and all
            while live and ends[live - 1] <= t:
                live -= 1
            cut = int((hi[:, 0] < live).sum())
            ended.append((t, cut, hf[:, cut:], hi[cut:]))
            hf, hi = hf[:, :cut], hi[:cut]
        if not live:
            break
        num = hi.shape[0]
        utt, last, key = hi[:, 0], hi[:, 1], hi[:, 2]
        p_b, p_nb = hf[0], hf[1]
        total = plus(p_b, p_nb)  # (hyps,)
        row = utt * frames + t  # (hyps,) the hypothesis's (utterance, frame)

        # grow: hyp + c for the frame's candidate labels c (a repeat only from alignments ending in blank)
        cand = cand_id.index_select(0, row)  # (hyps, k)
        grow = torch.where(cand == last[:, None], p_b[:, None], total[:, None]).add_(cand_lp.index_select(0, row))
        flat = (grow > NEG_INF).view(-1).nonzero().squeeze(1)  # (grows,) the finite ones
        g_parent = flat.div(k, rounding_mode="floor")
        g_label = cand.view(-1).index_select(0, flat)
        g_nb = grow.view(-1).index_select(0, flat)
        g_key = hash_step(key.index_select(0, g_parent), g_label)
        # stay: blank, or the last label again; written over p_b and p_nb, which the grows have read
        torch.add(total, blank_lp.index_select(0, row), out=p_b)
        p_nb.add_(flat_lp.index_select(0, torch.add(last, row, alpha=vocab)))  # an empty prefix has p_nb = -inf

        # A grown prefix already in the list: its alignments join that hypothesis's p_nb, and it
        # is no new candidate. The list's prefixes are distinct, and so are the grows (one
        # parent, one label), so at most one grow lands on each hypothesis: found by hash, the
        # grows' searched among the list's, sorted.
        sorted_key, order = key.sort()
        at = torch.searchsorted(sorted_key, g_key).clamp_(max=num - 1)
        dup = (sorted_key.index_select(0, at) == g_key).nonzero().squeeze(1)  # (dups,) grows
        into = order.index_select(0, at.index_select(0, dup))  # (dups,) hypotheses
        p_nb.index_copy_(0, into, plus(p_nb.index_select(0, into), g_nb.index_select(0, dup)))
        g_nb.index_fill_(0, dup, NEG_INF)

        fused = weights @ hf[2:]  # (hyps,) lm_weight * ln P_lm + word_bonus * words
        stay_score = plus(p_b, p_nb).add_(fused)
        if early_pruning:
            # Grows that cannot make the beam leave before the LM sees them: fusion adds at most
            # `bound[label]` to a grow's score, so a grow that falls beam_threshold below its
            # utterance's best stay even with that would be dropped by the selection anyway.
            bar = stay_score.new_full((batch,), NEG_INF).scatter_reduce_(0, utt, stay_score, "amax").sub_(beam_threshold + 1e-3)
            bar = bar.index_select(0, utt).sub_(fused)  # (hyps,) what a grow needs, before fusion
            need = bar.index_select(0, g_parent).sub_(bound.index_select(0, g_label)).clamp_(min=lowest)
            kept = (g_nb >= need).nonzero().squeeze(1)  # also drops the merged grows (-inf)
            g_parent, g_label, g_nb, g_key = (x.index_select(0, kept) for x in (g_parent, g_label, g_nb, g_key))

        # candidates [hyps | grows]: float rows, long columns, and their total scores
        g_i = hi.index_select(0, g_parent)  # (grows, 3 + S)
        g_f = hf.index_select(1, g_parent)
        g_f[0] = NEG_INF
        g_f[1] = g_nb
        g_i[:, 1] = g_label
        g_i[:, 2] = g_key
        if fusion is not None:
            d_lm, d_words = fusion.grow_(g_i[:, 3:], g_label)
            g_f[2] += d_lm
            g_f[3] += d_words
        c_f = torch.cat([hf, g_f], dim=1)  # (4, cands)
        c_i = torch.cat([hi, g_i])  # (cands, 3 + S)
        score = torch.cat([stay_score, torch.addmv(g_nb, g_f[2:].t(), weights)])  # (cands,)

        # each utterance keeps its best `beam_size` within `beam_threshold` of its best
        pick = _best_per_utterance(score, c_i[:, 0], batch, beam_size, beam_threshold)  # grouped by utterance, best first
        hf = c_f.index_select(1, pick)
        hi = c_i.index_select(0, pick)
        parent = torch.cat([stay_parent[:num], g_parent]).index_select(0, pick)
        label = torch.cat([stay_label[:num], g_label]).index_select(0, pick)
        history.append((parent, label))

    # every utterance has ended: score its hypotheses as they were then
    seen = torch.cat([torch.full((i.shape[0],), n, device=device) for n, _, _, i in ended])  # frames each one saw
    index = torch.cat([torch.arange(at, at + i.shape[0], device=device) for _, at, _, i in ended])  # its place in the list then
    hf = torch.cat([f for _, _, f, _ in ended], dim=1)
    hi = torch.cat([i for _, _, _, i in ended])
    utt = hi[:, 0]
    acoustic = plus(hf[0], hf[1])  # (hyps,)
    lm_total, words = hf[2], hf[3]
    if fusion is not None:
        final_lm, final_words = fusion.final_scores(hi[:, 3:])
        lm_total, words = lm_total + final_lm, words + final_words
    score = acoustic + lm_weight * lm_total + word_bonus * words
    chosen = _best_per_utterance(score, utt, batch, nbest)  # (chosen,) grouped by utterance, best first
    spelled = _backtrack(history, seen.index_select(0, chosen), index.index_select(0, chosen))
    owner = by_length.index_select(0, utt.index_select(0, chosen)).tolist()
    score, acoustic, lm_total, words = (v.index_select(0, chosen).tolist() for v in (score, acoustic, lm_total, words))
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for i, b in enumerate(owner):
        results[b].append(Hypothesis(spelled[i], score[i], acoustic[i], lm_total[i], int(words[i])))
    return results


def _have_numba() -> bool:
    """Whether numba imports (it compiles the CPU layout; without it, the flat list runs)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def fusion_bound(fusion: Fusion | None, vocab: int, lm_weight: float, word_bonus: float, beam_threshold: float, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Per label, the most fusion can add to the score of a grow by it (its LM gain and word
    bonus): (vocab,) float; and whether that prunes anything (decode_beam's early pruning)."""
    bound = torch.zeros(vocab, device=device)
    if fusion is not None and lm_weight < 0:  # an LM loss would count as a gain, without bound
        bound.fill_(math.inf)
    elif fusion is not None:
        if lm_weight > 0:  # (at 0 the LM counts for nothing, an unbounded gain included)
            bound += lm_weight * fusion.label_gain.to(device)
        bound += max(word_bonus, 0.0) * fusion.label_words.to(device)
    return bound, beam_threshold < math.inf and bool((bound < math.inf).any())


def _frame_candidates(log_probs: torch.Tensor, lengths: torch.Tensor, top_k: int, min_logp: float, blank: int, cum_prob: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels each frame tries: its `top_k` most probable non-blank labels with log prob at
    least `min_logp`, among the most probable labels (blank included) whose probabilities first
    reach `cum_prob` in sum. log_probs (batch, frames, vocab) -> the labels and their log probs,
    both (batch * frames, k), k the most any frame has (padded with log prob -inf)."""
    batch, frames, vocab = log_probs.shape
    lp = log_probs.reshape(-1, vocab)
    ok = candidate_mask(lp, lengths, frames, min_logp, blank, cum_prob)
    count = ok.sum(dim=1)
    if top_k < vocab - 1:  # the frames with more labels than that keep their top_k
        over = (count > top_k).nonzero().squeeze(1)
        if over.numel():
            rows = lp.index_select(0, over)
            rows[:, blank] = NEG_INF
            top = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, rows.topk(top_k, dim=1).indices, True)
            ok.index_copy_(0, over, ok.index_select(0, over) & top)
            count = ok.sum(dim=1)
    k = max(int(count.max()) if count.numel() else 0, 1)
    at = ok.view(-1).nonzero().squeeze(1)  # (n,) row * vocab + label, rising
    r = torch.div(at, vocab, rounding_mode="floor")
    first = count.cumsum(0).sub_(count)  # where each row's candidates start among them
    into = r * k + torch.arange(at.shape[0], device=lp.device).sub_(first.index_select(0, r))  # (row, place in the row)
    cand_id = torch.full((lp.shape[0] * k,), blank, dtype=torch.long, device=lp.device).index_copy_(0, into, at - r * vocab)
    cand_lp = torch.full((lp.shape[0] * k,), NEG_INF, device=lp.device).index_copy_(0, into, lp.view(-1).index_select(0, at))
    return cand_id.view(-1, k), cand_lp.view(-1, k)


def candidate_mask(lp: torch.Tensor, lengths: torch.Tensor, frames: int, min_logp: float, blank: int, cum_prob: float) -> torch.Tensor:
    """Which labels of each frame may be tried, before the top-k: lp (batch * frames, vocab) ->
    bool, the same shape. Not blank, log prob at least `min_logp`, within `cum_prob`, and
    nothing for frames past the utterance's end."""
    ok = lp >= min_logp
    if cum_prob < 1.0:  # a label is in if the labels more probable than it hold less than cum_prob
        ranked, order = lp.sort(dim=1, descending=True)
        p = ranked.exp()
        ok &= torch.zeros_like(ok).scatter_(1, order, p.cumsum(1).sub_(p) < cum_prob)
    ok[:, blank] = False
    ok &= (torch.arange(frames, device=lp.device) < lengths[:, None]).view(-1, 1)  # frames past the end try nothing
    return ok


def _backtrack(history: list[tuple[torch.Tensor, torch.Tensor]], seen: torch.Tensor, index: torch.Tensor) -> list[list[int]]:
    """Spell out hypotheses from the per-frame back-pointers: hypothesis i is entry index[i] of
    the list after frame seen[i]. One walk back over the frames serves all of them: a
    hypothesis joins the walk at its own last frame."""
    order = torch.argsort(seen, descending=True, stable=True)
    starts = seen.index_select(0, order).tolist()
    pointers = index.index_select(0, order)
    out = torch.full((len(history), len(starts)), -1, dtype=torch.long, device=seen.device)
    active, hyp = 0, pointers[:0]
    for t in range(len(history) - 1, -1, -1):
        while active < len(starts) and starts[active] > t:
            active += 1
        if active > hyp.shape[0]:
            hyp = torch.cat([hyp, pointers[hyp.shape[0] : active]])
        if active:
            parent, label = history[t]
            out[t, :active] = label.index_select(0, hyp)
            hyp = parent.index_select(0, hyp)
    spelled: list[list[int]] = [[] for _ in starts]
    for i, labels in zip(order.tolist(), out.t().cpu().tolist()):
        spelled[i] = [c for c in labels if c >= 0]
    return spelled


def make_fusion(lm_path: str, tokenizer, unit: str = "auto", device: torch.device | str = "cpu", oov_penalty: float = -10.0, lookahead: bool = True) -> Fusion:
    """Load an n-gram LM (an ARPA file, or `asr lm compile`'s output) for a tokenizer: word-level
    fusion for character models ("auto" picks it when the tokenizer is a character one),
    token-level for anything else. oov_penalty and lookahead are for word-level fusion (see
    WordLMFusion)."""
    if unit == "auto":
        unit = "word" if getattr(tokenizer, "kind", "") == "char" else "token"
    if unit not in ("word", "token"):
        raise ValueError(f"lm_unit must be 'word', 'token' or 'auto', not {unit!r}")
    lm = NGramLM.from_file(lm_path, device)
    if unit == "word":
        return WordLMFusion(lm, tokenizer.symbols, oov_penalty=oov_penalty, lookahead=lookahead)
    return TokenLMFusion(lm, tokenizer.symbols)
