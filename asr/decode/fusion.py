"""What an n-gram LM adds to the prefix beam search (shallow fusion): the score of a hypothesis
is log P_ctc + lm_weight * ln P_lm(words) + word_bonus * num_words, and a fusion object decides
what a "word" is. `WordLMFusion` scores whole words at each delimiter (the space of a character
model) and at the end; `TokenLMFusion` scores every label (a phone or character n-gram).

A fusion's tables are numpy arrays, built once from the LM (no torch). Every layout of the
search (`asr.decode.beam`) asks the same questions of them: the start state, what a grow by a
label adds, what the end adds, and, for early pruning, the most a grow can gain
(`fusion_bound`). The numba layout reads the arrays directly (`fusion_tables`); the torch
layouts (flat, dense, triton) read them as tensors on their device (`fusion.tensors(device)`:
`TokenLMTensors`, `WordLMTensors`, made once and kept), whose `grow_`, `init_state` and
`final_scores` are the search's steps in torch ops.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from asr.decode.lm import NGramLM
from asr.tokens import BLANK_ID, SPACE


class _OnDevices:
    """A fusion's tables as torch tensors, one view per device, made on first use and kept: what
    the torch layouts read (`tensors`); the numba layout reads the numpy arrays themselves."""

    def tensors(self, device="cpu"):
        """The tables as torch tensors on `device`, with the torch layouts' steps."""
        lm = self.lm.tensors(device)
        if lm.device not in self._tensors:
            self._tensors[lm.device] = self._view(lm)
        return self._tensors[lm.device]

    def to(self, device):
        """Make the tables' tensors on `device` now (`tensors`)."""
        self.tensors(device)
        return self


class TokenLMFusion(_OnDevices):
    """Token-level fusion: every label is an LM word (its symbol string), e.g. a phone n-gram.
    Works for any tokenizer: give it the tokenizer's symbols (index = label id).

    State of a hypothesis: one int64 column, the LM state.

    The labels are few, so when the LM's contexts times the labels are at most `table_limit`,
    every (state, label) is scored once here, into two tables the search reads with one gather
    each; a larger LM is asked at every step.
    """

    def __init__(self, lm: NGramLM, symbols: Sequence[str], space_word: str = "|", table_limit: int = 1 << 22):
        self.lm = lm
        # label id -> LM word id (<unk> for symbols the LM does not know; blank is never scored);
        # a space label is the LM word `space_word` (ARPA words cannot be blank)
        words = [space_word if s == SPACE else s for s in symbols]
        self.token_words = np.array([lm.word_id(w) for w in words], dtype=np.int64)
        self.vocab = len(symbols)
        # per label, the most a grow by it can add to the LM score (an LM log prob is <= 0) and
        # to the words scored (see decode_beam's early pruning)
        self.label_gain = np.zeros(self.vocab, dtype=np.float32)
        self.label_words = np.ones(self.vocab, dtype=np.float32)
        self.table_logp = self.table_next = None  # (contexts * vocab,) entry state * vocab + label
        contexts = lm.num_contexts
        if contexts * self.vocab <= table_limit:
            chunk = max((1 << 16) // self.vocab, 1)  # states per call: bounds the lookup's memory
            logps, nexts = [], []
            for first in range(0, contexts, chunk):
                states = np.arange(first, min(first + chunk, contexts))
                logp, after = lm.score(np.repeat(states, self.vocab), np.tile(self.token_words, len(states)))
                logps.append(logp)
                nexts.append(after)
            self.table_logp, self.table_next = np.concatenate(logps), np.concatenate(nexts)
        self._tensors: dict = {}

    def _view(self, lm) -> "TokenLMTensors":
        return TokenLMTensors(self, lm)

    def final_scores(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hypotheses in `state` (hyps, 1) ending -> what the end adds to ln P_lm (</s>) and to
        the words scored (hyps,) float32."""
        logp, _ = self.lm.score(state[:, 0], np.full(len(state), self.lm.eos))
        return logp, np.zeros_like(logp)


class WordLMFusion(_OnDevices):
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

    State of a hypothesis: two int64 columns, [LM state before the unfinished word, trie node of
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
        trie = np.full((dead + 1, len(symbols)), dead, dtype=np.int64)
        for node, kids in enumerate(children):
            for label, child in kids.items():
                trie[node, label] = child
        trie[:, self.delimiter] = 0  # a delimiter ends the word: the next one starts at the root
        ends_word = np.zeros((dead + 1, len(symbols)), dtype=bool)
        ends_word[1:, self.delimiter] = True  # a delimiter after at least one label of a word
        # lookahead per node: the best unigram ln P below it (<unk>'s for the dead node, 0 at the root)
        ahead = [0.0] * (dead + 1)
        if lookahead:
            unigram = lm.unigram_logp()
            for node in range(dead - 1, 0, -1):  # a child is numbered after its parent
                own = unigram[node_word[node]] if node_word[node] != lm.unk else -math.inf
                ahead[node] = max([own] + [ahead[child] for child in children[node].values()])
            ahead[dead] = unigram[lm.unk]
        look = np.array(ahead, dtype=np.float32)
        penalty = np.zeros((dead + 1, len(symbols)), dtype=np.float32)
        penalty[:dead] = (trie[:dead] == dead) * np.float32(oov_penalty)  # the label leaves the listed words
        penalty += look[trie] - look[:, None]
        penalty[:, self.delimiter] = 0.0  # ending a word: see end_cost
        # per node, what ending the word there adds to the LM's score for it: the OOV penalty for
        # the start of a listed word that is no word itself (the dead node has paid already),
        # less the lookahead paid in advance
        unlisted = [0.0] + [oov_penalty if w == lm.unk else 0.0 for w in node_word[1:]] + [0.0]
        self.end_cost = np.array(unlisted, dtype=np.float32) - look  # (nodes + 1,)
        self.vocab = len(symbols)
        # per label, the most a grow by it can add to the LM score and to the words scored (see
        # decode_beam's early pruning): within a word, the penalty (a lookahead only falls); a
        # finished word's LM score may beat its lookahead by any amount, without lookahead
        # it is a log prob (<= 0)
        self.label_gain = penalty.max(axis=0)
        self.label_gain[self.delimiter] = math.inf if lookahead else 0.0
        self.label_words = (np.arange(len(symbols)) == self.delimiter).astype(np.float32)
        # (nodes + 1) * vocab tables, entry node * vocab + label
        self.trie = trie.reshape(-1)
        self.ends_word = ends_word.reshape(-1)
        self.penalty = penalty.reshape(-1)
        self.node_word = np.array(node_word + [lm.unk], dtype=np.int64)  # (nodes + 1,) LM word id
        self._tensors: dict = {}

    def _view(self, lm) -> "WordLMTensors":
        return WordLMTensors(self, lm)

    def final_scores(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hypotheses in `state` (hyps, 2) ending -> what the end adds to ln P_lm (the unfinished
        word, then </s>) and to the words scored, (hyps,) float32 each."""
        pending = state[:, 1] != 0  # (hyps,) an unfinished word to score first
        word_logp, after = self.lm.score(state[:, 0], self.node_word[state[:, 1]])
        word_logp = word_logp + self.end_cost[state[:, 1]]
        eos_logp, _ = self.lm.score(np.where(pending, after, state[:, 0]), np.full(len(state), self.lm.eos))
        return word_logp * pending + eos_logp, pending.astype(np.float32)


Fusion = TokenLMFusion | WordLMFusion


class TokenLMTensors:
    """A TokenLMFusion's tables as tensors on one device (`TokenLMFusion.tensors`), and the
    search's steps with them in torch ops."""

    def __init__(self, fusion: TokenLMFusion, lm):
        import torch

        self.lm = lm  # NGramTensors
        self.vocab = fusion.vocab
        self.token_words, self.label_gain, self.label_words, self.table_logp, self.table_next = (
            None if a is None else torch.from_numpy(a).to(lm.device)
            for a in (fusion.token_words, fusion.label_gain, fusion.label_words, fusion.table_logp, fusion.table_next)
        )

    def init_state(self, hyps: int):
        return self.lm.start_state(hyps, 1)

    def grow_(self, state, labels, dense: bool = False):
        """Hypotheses in `state` (grows, S) each growing by one of `labels` (grows,) -> LM ln
        prob (grows,), words added (grows,); `state` becomes theirs after the grow, in place.
        (`dense`: see WordLMTensors.grow_; every grow is scored here anyway.)"""
        import torch

        if self.table_logp is None:
            logp, after = self.lm.score(state[:, 0], self.token_words.index_select(0, labels))
        else:
            entry = torch.add(labels, state[:, 0], alpha=self.vocab)
            logp, after = self.table_logp.index_select(0, entry), self.table_next.index_select(0, entry)
        state[:, 0] = after
        return logp, torch.ones_like(logp)

    def final_scores(self, state):
        import torch

        eos = torch.full(state.shape[:-1], self.lm.eos, dtype=torch.long, device=self.lm.device)
        logp, _ = self.lm.score(state.view(-1), eos)
        return logp, torch.zeros_like(logp)


class WordLMTensors:
    """A WordLMFusion's tables as tensors on one device (`WordLMFusion.tensors`), and the
    search's steps with them in torch ops."""

    def __init__(self, fusion: WordLMFusion, lm):
        import torch

        self.lm = lm  # NGramTensors
        self.vocab = fusion.vocab
        self.trie, self.ends_word, self.penalty, self.node_word, self.end_cost, self.label_gain, self.label_words = (
            torch.from_numpy(a).to(lm.device)
            for a in (fusion.trie, fusion.ends_word, fusion.penalty, fusion.node_word, fusion.end_cost, fusion.label_gain, fusion.label_words)
        )

    def init_state(self, hyps: int):
        import torch

        return torch.stack([self.lm.start_state(hyps), torch.zeros(hyps, dtype=torch.long, device=self.lm.device)], dim=1)

    def grow_(self, state, labels, dense: bool = False):
        """Hypotheses in `state` (grows, S) each growing by one of `labels` (grows,) -> LM ln
        prob (grows,), words added (grows,); `state` becomes theirs after the grow, in place.
        The LM is only asked about the grows that finish a word; with `dense`, about every grow
        (the answers of the others are dropped), so that the shapes do not depend on the data."""
        import torch

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

    def _end_word(self, state):
        """Hypotheses in `state` (hyps, S) ending their unfinished word -> what that adds to the
        LM score (the word's ln P, OOV penalty and lookahead settled) and the LM state after it."""
        node = state[:, 1]
        word_logp, ctx = self.lm.score(state[:, 0], self.node_word.index_select(0, node))
        return word_logp + self.end_cost.index_select(0, node), ctx

    def final_scores(self, state):
        import torch

        pending = state[:, 1] != 0  # (hyps,) an unfinished word to score first
        word_logp, after = self._end_word(state)
        ctx = torch.where(pending, after, state[:, 0])
        eos = torch.full(pending.shape, self.lm.eos, dtype=torch.long, device=self.lm.device)
        eos_logp, _ = self.lm.score(ctx, eos)
        return word_logp * pending + eos_logp, pending.to(eos_logp.dtype)


# The kinds of fusion a compiled layout (numba, triton) tells apart when it scores a grow
NO_FUSION, WORD_FUSION, TOKEN_TABLES, TOKEN_LM = 0, 1, 2, 3


def fusion_kind(fusion: Fusion | TokenLMTensors | WordLMTensors | None) -> int:
    """Which of NO_FUSION, WORD_FUSION, TOKEN_TABLES (a TokenLMFusion with its tables) and
    TOKEN_LM (one that asks the n-gram at every grow) a fusion, or its tensors, is."""
    if fusion is None:
        return NO_FUSION
    if isinstance(fusion, (WordLMFusion, WordLMTensors)):
        return WORD_FUSION
    if isinstance(fusion, (TokenLMFusion, TokenLMTensors)):
        return TOKEN_TABLES if fusion.table_logp is not None else TOKEN_LM
    raise TypeError(f"a compiled beam search knows WordLMFusion and TokenLMFusion, not {type(fusion).__name__}")


def fusion_tables(fusion: Fusion | None, source=None, dummies: tuple | None = None) -> tuple[int, object, list, list]:
    """What a compiled layout needs of a fusion: its kind, its n-gram, the WordLMFusion tables
    [trie, ends_word (viewed as int8, no copy), penalty, node_word, end_cost] and the
    TokenLMFusion ones [token_words, table_logp, table_next]; a kind's unused tables are
    1-element dummies of the same dtypes (so the layout compiles one version of its search).
    `source`: where the tables come from (default the fusion's numpy arrays; the Triton layout
    passes `fusion.tensors(device)`), `dummies`: (float32, int64, int8) 1-element arrays of the
    same kind (default numpy's)."""
    kind = fusion_kind(fusion)
    source = fusion if source is None else source
    f32, i64, i8 = dummies or (np.zeros(1, dtype=np.float32), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int8))
    word = [i64, i8, f32, i64, f32]
    token = [i64, f32, i64]
    if kind == WORD_FUSION:
        word = [source.trie, source.ends_word.view(i8.dtype), source.penalty, source.node_word, source.end_cost]
    elif kind == TOKEN_TABLES:
        token = [i64, source.table_logp, source.table_next]
    elif kind == TOKEN_LM:
        token = [source.token_words, f32, i64]
    return kind, None if fusion is None else source.lm, word, token


def fusion_bound(fusion: Fusion | None, vocab: int, lm_weight: float, word_bonus: float, beam_threshold: float) -> tuple[np.ndarray, bool]:
    """Per label, the most fusion can add to the score of a grow by it (its LM gain and word
    bonus): (vocab,) float32; and whether that prunes anything (decode_beam's early pruning)."""
    bound = np.zeros(vocab, dtype=np.float32)
    if fusion is not None and lm_weight < 0:  # an LM loss would count as a gain, without bound
        bound.fill(math.inf)
    elif fusion is not None:
        if lm_weight > 0:  # (at 0 the LM counts for nothing, an unbounded gain included)
            bound += lm_weight * fusion.label_gain
        bound += max(word_bonus, 0.0) * fusion.label_words
    return bound, beam_threshold < math.inf and bool((bound < math.inf).any())


def make_fusion(lm_path: str, tokenizer, unit: str = "auto", device="cpu", oov_penalty: float = -10.0, lookahead: bool = True) -> Fusion:
    """Load an n-gram LM (an ARPA file, or `asr lm compile`'s output) for a tokenizer: word-level
    fusion for character models ("auto" picks it when the tokenizer is a character one),
    token-level for anything else. oov_penalty and lookahead are for word-level fusion (see
    WordLMFusion). device: where the torch layouts will decode; its tensors are made now when it
    is not the CPU (there they share the arrays' memory, made at first use)."""
    if unit == "auto":
        unit = "word" if getattr(tokenizer, "kind", "") == "char" else "token"
    if unit not in ("word", "token"):
        raise ValueError(f"lm_unit must be 'word', 'token' or 'auto', not {unit!r}")
    lm = NGramLM.from_file(lm_path)
    if unit == "word":
        fusion = WordLMFusion(lm, tokenizer.symbols, oov_penalty=oov_penalty, lookahead=lookahead)
    else:
        fusion = TokenLMFusion(lm, tokenizer.symbols)
    return fusion if str(device) == "cpu" else fusion.to(device)
