"""Beam search with an n-gram LM: our decoder vs pyctcdecode and flashlight-text, same log-probs,
same ARPA file, same beam size, same run. Prints WER and utterances/s for each, and the ratios.

    pip install -e ".[bench]"                    # kenlm, flashlight-text, pygtrie
    pip install --no-deps pyctcdecode==0.5.0     # its numpy<2 pin is not needed to run
    asr demo --out demo_out                      # a checkpoint and a corpus, if you have none
    python scripts/bench_decode.py --checkpoint demo_out/run/best.pt --corpus demo_out/corpus

Two comparisons:
 1. word LM (an N-gram over words, estimated from the training transcripts by `asr lm build`):
    ours (word-level fusion) vs pyctcdecode vs flashlight-text's LexiconDecoder (its lexicon
    is the LM's vocabulary, spelled in characters; the space label is its word separator);
 2. character LM (an N-gram over the labels, "|" for space): ours (token-level fusion) vs
    flashlight-text's LexiconFreeDecoder. pyctcdecode has no token-level LM.
Greedy decoding and beam search without an LM are listed for reference.

LM weights are in natural-log units for ours and pyctcdecode (alpha * ln P); flashlight's KenLM
returns log10, so it gets alpha * ln(10) to be the same weight.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asr.data.manifest import read_manifest
from asr.decode import decode_greedy
from asr.decode.beam import TokenLMFusion, WordLMFusion, decode_beam
from asr.decode.kn import estimate_kneser_ney
from asr.decode.lm import NGramLM, read_arpa, sentences_from_file, write_arpa
from asr.inference import Recognizer, collect_log_probs
from asr.metrics import score_wer
from asr.text import SPACE, normalize_text


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_ours(log_probs, tokenizer, batch_size, device, **options):
    texts = []
    for start in range(0, len(log_probs), batch_size):
        chunk = [x.to(device) for x in log_probs[start : start + batch_size]]
        lengths = torch.tensor([len(x) for x in chunk], device=device)
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)  # (batch, frames, vocab)
        if options.get("greedy"):
            texts += [tokenizer.decode(ids) for ids in decode_greedy(padded, lengths)]
        else:
            texts += [tokenizer.decode(h[0].ids if h else []) for h in decode_beam(padded, lengths, **options)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return texts


def pyctcdecode_decoder(symbols, arpa, alpha, beta):
    from pyctcdecode import build_ctcdecoder

    labels = [""] + list(symbols[1:])  # "" is its blank
    return build_ctcdecoder(labels, kenlm_model_path=arpa, alpha=alpha, beta=beta)


def run_pyctcdecode(decoder, log_probs, beam):
    # token_min_logp / beam_prune_logp left at pyctcdecode's defaults
    return [decoder.decode(x.numpy(), beam_width=beam).strip() for x in log_probs]


def flashlight_lexicon_decoder(symbols, arpa, beam, top_k, alpha, beta):
    from flashlight.lib.text.decoder import CriterionType, KenLM, LexiconDecoder, LexiconDecoderOptions, SmearingMode, Trie
    from flashlight.lib.text.dictionary import Dictionary, create_word_dict

    tokens = list(symbols)
    token_dict = Dictionary(tokens)
    words = [w for w in NGramLM(read_arpa(arpa)).words if w not in ("<s>", "</s>", "<unk>") and all(c in tokens[1:] for c in w)]
    lexicon = {w: [list(w)] for w in words}
    lexicon["<unk>"] = [["<unk>"]]
    word_dict = create_word_dict(lexicon)
    lm = KenLM(arpa, word_dict)
    space = tokens.index(SPACE)
    trie = Trie(len(tokens), space)
    start = lm.start(False)
    for w in words:
        _, score = lm.score(start, word_dict.get_index(w))
        trie.insert([token_dict.get_index(c) for c in w], word_dict.get_index(w), score)
    trie.smear(SmearingMode.MAX)
    options = LexiconDecoderOptions(
        beam_size=beam, beam_size_token=top_k, beam_threshold=25.0, lm_weight=alpha * math.log(10), word_score=beta,
        unk_score=-math.inf, sil_score=0.0, log_add=True, criterion_type=CriterionType.CTC,
    )
    decoder = LexiconDecoder(options, trie, lm, space, 0, word_dict.get_index("<unk>"), [], False)
    return decoder, tokens


def flashlight_lexicon_free_decoder(symbols, arpa, beam, top_k, alpha):
    from flashlight.lib.text.decoder import CriterionType, KenLM, LexiconFreeDecoder, LexiconFreeDecoderOptions
    from flashlight.lib.text.dictionary import Dictionary

    tokens = [("|" if s == SPACE else s) for s in symbols]
    lm = KenLM(arpa, Dictionary(tokens))
    options = LexiconFreeDecoderOptions(
        beam_size=beam, beam_size_token=top_k, beam_threshold=25.0, lm_weight=alpha * math.log(10), sil_score=0.0,
        log_add=True, criterion_type=CriterionType.CTC,
    )
    return LexiconFreeDecoder(options, lm, tokens.index("|"), 0, []), list(symbols)


def run_flashlight(decoder_and_tokens, log_probs):
    decoder, tokens = decoder_and_tokens
    texts = []
    for x in log_probs:
        emissions = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        result = decoder.decode(emissions.ctypes.data, emissions.shape[0], emissions.shape[1])[0]
        ids, prev = [], -1
        for t in result.tokens:  # frame-level labels, CTC-collapsed here
            if t != prev and t != 0 and t >= 0:
                ids.append(t)
            prev = t
        texts.append(normalize_text("".join(tokens[i] for i in ids)))
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained character model (e.g. demo_out/run/best.pt)")
    parser.add_argument("--corpus", required=True, help="folder with train.jsonl (LM text) and test.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beam", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=8, help="labels tried per frame (ours and flashlight)")
    parser.add_argument("--order", type=int, default=3, help="word LM order")
    parser.add_argument("--char-order", type=int, default=6, help="character LM order")
    parser.add_argument("--alpha", type=float, default=0.5, help="LM weight on ln P (word LM)")
    parser.add_argument("--beta", type=float, default=1.0, help="word bonus (word LM)")
    parser.add_argument("--char-alpha", type=float, default=0.3, help="LM weight on ln P (character LM)")
    parser.add_argument("--batch-size", type=int, default=150, help="utterances per batch for ours")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the peers use one)")
    parser.add_argument("--skip", default="", help="comma-separated decoders to skip: pyctcdecode,flashlight")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))

    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu")
    tokenizer = recognizer.tokenizer
    symbols = tokenizer.symbols
    corpus = Path(args.corpus)
    data = collect_log_probs(recognizer, read_manifest(corpus / f"{args.split}.jsonl"))
    log_probs = [x.cpu().contiguous() for x in data.log_probs]
    refs = data.references
    seconds = sum(len(x) for x in log_probs)

    workdir = Path(tempfile.mkdtemp(prefix="bench_decode."))
    sentences = [normalize_text(t).split() for t in sentences_from_file(corpus / "train.jsonl")]
    word_arpa = str(workdir / f"words.{args.order}gram.arpa")
    write_arpa(word_arpa, estimate_kneser_ney(sentences, args.order))
    char_arpa = str(workdir / f"chars.{args.char_order}gram.arpa")
    write_arpa(char_arpa, estimate_kneser_ney([list("|".join(s)) for s in sentences], args.char_order))

    cpu = torch.device("cpu")
    word_fusion = WordLMFusion(NGramLM.from_file(word_arpa), symbols)
    char_fusion = TokenLMFusion(NGramLM.from_file(char_arpa), symbols)
    beam_opts = dict(beam_size=args.beam, token_top_k=args.top_k)
    rows = []  # (name, lm, texts, seconds)

    def add(name, lm, fn):
        texts, elapsed = timed(fn)
        rows.append((name, lm, score_wer(refs, texts).rate, len(refs) / elapsed))
        print(f"  {name:<34} {lm:<14} WER {rows[-1][2]:.2%}  {rows[-1][3]:8.1f} utt/s", file=sys.stderr, flush=True)

    print(f"{len(refs)} utterances, {seconds} frames; LMs in {workdir}", file=sys.stderr)
    add("greedy", "-", lambda: run_ours(log_probs, tokenizer, args.batch_size, cpu, greedy=True))
    add("ours, CPU", "-", lambda: run_ours(log_probs, tokenizer, args.batch_size, cpu, **beam_opts))
    add("ours, CPU", f"word {args.order}-gram", lambda: run_ours(log_probs, tokenizer, args.batch_size, cpu, fusion=word_fusion, lm_weight=args.alpha, word_bonus=args.beta, **beam_opts))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        word_fusion.to(gpu)
        run_ours(log_probs[:8], tokenizer, 8, gpu, fusion=word_fusion, **beam_opts)  # warm-up
        add("ours, CUDA", f"word {args.order}-gram", lambda: run_ours(log_probs, tokenizer, args.batch_size, gpu, fusion=word_fusion, lm_weight=args.alpha, word_bonus=args.beta, **beam_opts))
        word_fusion.to(cpu)
    if "pyctcdecode" not in skip:
        decoder = pyctcdecode_decoder(symbols, word_arpa, args.alpha, args.beta)
        add("pyctcdecode", f"word {args.order}-gram", lambda: run_pyctcdecode(decoder, log_probs, args.beam))
    if "flashlight" not in skip:
        fl = flashlight_lexicon_decoder(symbols, word_arpa, args.beam, args.top_k, args.alpha, args.beta)
        add("flashlight-text LexiconDecoder", f"word {args.order}-gram", lambda: run_flashlight(fl, log_probs))
    add("ours, CPU", f"char {args.char_order}-gram", lambda: run_ours(log_probs, tokenizer, args.batch_size, cpu, fusion=char_fusion, lm_weight=args.char_alpha, word_bonus=0.0, **beam_opts))
    if "flashlight" not in skip:
        fl = flashlight_lexicon_free_decoder(symbols, char_arpa, args.beam, args.top_k, args.char_alpha)
        add("flashlight-text LexiconFreeDecoder", f"char {args.char_order}-gram", lambda: run_flashlight(fl, log_probs))

    ours = {lm: speed for name, lm, _, speed in rows if name == "ours, CPU"}
    print(f"\nbeam {args.beam}, top-k {args.top_k}, {args.threads} torch thread(s), batch {args.batch_size}; "
          f"{len(refs)} {args.split} utterances; alpha {args.alpha} beta {args.beta} (word), alpha {args.char_alpha} (char)\n")
    print("| decoder | LM | WER | utterances/s | ours (CPU, same LM) is faster by |")
    print("|---|---|---|---|---|")
    for name, lm, wer, speed in rows:
        ratio = f"{ours[lm] / speed:.1f}x" if lm in ours and name != "ours, CPU" else ""
        print(f"| {name} | {lm} | {wer:.2%} | {speed:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
