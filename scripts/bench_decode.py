"""Beam search with an n-gram LM: our decoder vs pyctcdecode and flashlight-text, same log-probs,
same ARPA file, same beam size, same run. Prints WER and utterances/s for each, and the ratios.

    pip install -e ".[bench]"                    # kenlm, flashlight-text, pygtrie
    pip install --no-deps pyctcdecode==0.5.0     # its numpy<2 pin is not needed to run
    asr demo --out demo_out                      # a checkpoint and a corpus, if you have none
    python scripts/bench_decode.py --checkpoint demo_out/run/best.pt --corpus demo_out/corpus

To decode on another machine (a GPU) without the model and audio, run the model once here and
carry the log-probs (a few MB): `--save-log-probs lp.pt` writes them with the tokenizer and the
LM training text and stops; `--log-probs lp.pt` then replaces --checkpoint and --corpus.

Two comparisons:
 1. word LM (an N-gram over words, estimated from the training transcripts by `asr lm build`):
    ours (word-level fusion) vs pyctcdecode vs flashlight-text's LexiconDecoder (its lexicon
    is the LM's vocabulary, spelled in characters; the space label is its word separator);
 2. character LM (an N-gram over the labels, "|" for space): ours (token-level fusion) vs
    flashlight-text's LexiconFreeDecoder. pyctcdecode has no token-level LM.
Greedy decoding and beam search without an LM are listed for reference. "ours, CPU" is decode_beam's
default there (the numba layout, a compiled loop per utterance); "ours, CPU, numpy arrays" the same
on the log-probs as numpy arrays (as a runtime without torch decodes); "ours, CPU, flat list" runs
the same search as torch operations (layout="flat"), with the same results. With a CUDA GPU, ours also
runs there (same LMs) in batches of --batch-size and of 64, on the dense grid replayed as a CUDA
graph (decode_beam's default there), at 64 on the flat list too, and, where Triton is installed,
as one Triton kernel per batch (layout="triton"); the GPU's batch-64 speeds are compared with
flashlight-text on the CPU (the issue's target: at least 10x). The Triton kernel is compiled on
its first call, during the dev-set tuning, so the timed runs do not include compiling it.

Pruning is the same for all: beam size, labels per frame (top-k: ours and flashlight; a log-prob
floor: ours and pyctcdecode), and a beam threshold (prefixes more than it below the best are dropped;
pyctcdecode's beam_prune_logp, flashlight's beam_threshold).

LM weights are in natural-log units for ours and pyctcdecode (alpha * ln P); flashlight's KenLM
returns log10, so it gets alpha * ln(10) to be the same weight.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from asr.data.manifest import read_manifest
from asr.decode import decode_greedy
from asr.decode.beam import decode_beam
from asr.decode.fusion import TokenLMFusion, WordLMFusion
from asr.decode.kn import estimate_kneser_ney
from asr.decode.arpa import read_arpa, write_arpa
from asr.decode.lm import NGramLM, sentences_from_file
from asr.fileio import atomic_path
from asr.inference import Recognizer, collect_log_probs
from asr.metrics import score_wer
from asr.text import normalize_text, tokenizer_from_dict
from asr.tokens import SPACE


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_ours(log_probs, tokenizer, batch_size, device, numpy=False, **options):
    """Our decoder over the utterances in batches; numpy: as numpy arrays (the numba layout,
    decoding as a runtime without torch does)."""
    texts = []
    for start in range(0, len(log_probs), batch_size):
        chunk = [x.to(device) for x in log_probs[start : start + batch_size]]
        lengths = torch.tensor([len(x) for x in chunk], device=device)
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)  # (batch, frames, vocab)
        if numpy:
            padded, lengths = padded.numpy(), lengths.numpy()
        if options.get("greedy"):
            texts += [tokenizer.decode(ids) for ids in decode_greedy(padded, lengths)]
        else:
            texts += [tokenizer.decode(h[0].ids if h else []) for h in decode_beam(padded, lengths, **options)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return texts


def load_inputs(args) -> tuple:
    """(tokenizer, {"dev"|"test": (log-probs, references)}, LM training sentences), from a checkpoint
    and corpus or from a --save-log-probs file."""
    if args.log_probs:
        data = torch.load(args.log_probs, weights_only=True)  # tensors, strings and lists only
        sets = {split: (data[f"{split}_log_probs"], data[f"{split}_references"]) for split in ("dev", "test")}
        return tokenizer_from_dict(data["tokenizer"]), sets, data["lm_sentences"]
    if not (args.checkpoint and args.corpus):
        sys.exit("bench_decode.py: give --checkpoint and --corpus, or --log-probs")
    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu")
    corpus = Path(args.corpus)
    sets = {}
    for split in ("dev", "test"):
        data = collect_log_probs(recognizer, read_manifest(corpus / f"{split}.jsonl"))
        sets[split] = ([x.cpu().contiguous() for x in data.log_probs], data.references)
    sentences = [normalize_text(t).split() for t in sentences_from_file(corpus / "train.jsonl")]
    return recognizer.tokenizer, sets, sentences


def pyctcdecode_decoder(symbols, arpa, alpha, beta):
    from pyctcdecode import build_ctcdecoder

    labels = [""] + list(symbols[1:])  # "" is its blank
    return build_ctcdecoder(labels, kenlm_model_path=arpa, alpha=alpha, beta=beta)


def run_pyctcdecode(log_probs, decoder, beam, token_min_logp, beam_threshold):
    return [decoder.decode(x.numpy(), beam_width=beam, token_min_logp=token_min_logp, beam_prune_logp=-beam_threshold).strip() for x in log_probs]


def flashlight_lexicon_decoder(symbols, arpa, beam, top_k, threshold, alpha, beta):
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
        beam_size=beam, beam_size_token=top_k, beam_threshold=threshold, lm_weight=alpha * math.log(10), word_score=beta,
        unk_score=-math.inf, sil_score=0.0, log_add=True, criterion_type=CriterionType.CTC,
    )
    decoder = LexiconDecoder(options, trie, lm, space, 0, word_dict.get_index("<unk>"), [], False)
    return decoder, tokens


def flashlight_lexicon_free_decoder(symbols, arpa, beam, top_k, threshold, alpha):
    from flashlight.lib.text.decoder import CriterionType, KenLM, LexiconFreeDecoder, LexiconFreeDecoderOptions
    from flashlight.lib.text.dictionary import Dictionary

    tokens = [("|" if s == SPACE else s) for s in symbols]
    lm = KenLM(arpa, Dictionary(tokens))
    options = LexiconFreeDecoderOptions(
        beam_size=beam, beam_size_token=top_k, beam_threshold=threshold, lm_weight=alpha * math.log(10), sil_score=0.0,
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
    parser.add_argument("--checkpoint", help="a trained character model (e.g. demo_out/run/best.pt)")
    parser.add_argument("--corpus", help="folder with train.jsonl (LM text), dev.jsonl (tuning) and test.jsonl")
    parser.add_argument("--save-log-probs", metavar="PATH", help="write the model's dev/test log-probs, tokenizer and LM text here, and stop")
    parser.add_argument("--log-probs", metavar="PATH", help="decode these (from --save-log-probs) instead of --checkpoint/--corpus")
    parser.add_argument("--beam", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=8, help="labels tried per frame (ours and flashlight's beam_size_token)")
    parser.add_argument("--token-min-logp", type=float, default=-10.0, help="labels tried only at least this log prob (ours, pyctcdecode)")
    parser.add_argument("--beam-threshold", type=float, default=15.0, help="drop prefixes this far below the best (all three)")
    parser.add_argument("--order", type=int, default=3, help="word LM order")
    parser.add_argument("--char-order", type=int, default=6, help="character LM order")
    parser.add_argument("--alphas", default="0.5,0.8,1.2,1.6", help="LM weights (on ln P) tried on dev, per decoder")
    parser.add_argument("--betas", default="0,1,2,3", help="word bonuses tried on dev, per decoder (word LM)")
    parser.add_argument("--batch-size", type=int, default=150, help="utterances per batch for ours")
    parser.add_argument("--batch-sizes", default="", help="also time ours (word LM) at these batch sizes, e.g. 1,16,64")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the peers use one)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per decoder; the fastest counts")
    parser.add_argument("--skip", default="", help="comma-separated decoders to skip: pyctcdecode,flashlight")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    alphas = [float(a) for a in args.alphas.split(",")]
    betas = [float(b) for b in args.betas.split(",")]

    tokenizer, sets, sentences = load_inputs(args)
    symbols = tokenizer.symbols
    if args.save_log_probs:
        data = {"tokenizer": tokenizer.to_dict(), "lm_sentences": sentences}
        for split, (log_probs, references) in sets.items():
            data[f"{split}_log_probs"], data[f"{split}_references"] = log_probs, references
        with atomic_path(args.save_log_probs) as tmp:
            torch.save(data, tmp)
        print(f"wrote {args.save_log_probs}", file=sys.stderr)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="bench_decode."))
    word_arpa = str(workdir / f"words.{args.order}gram.arpa")
    write_arpa(word_arpa, estimate_kneser_ney(sentences, args.order))
    char_arpa = str(workdir / f"chars.{args.char_order}gram.arpa")
    write_arpa(char_arpa, estimate_kneser_ney([list("|".join(s)) for s in sentences], args.char_order))

    cpu = torch.device("cpu")
    word_fusion = WordLMFusion(NGramLM.from_file(word_arpa), symbols)
    char_fusion = TokenLMFusion(NGramLM.from_file(char_arpa), symbols)
    beam_opts = dict(beam_size=args.beam, token_top_k=args.top_k, token_min_logp=args.token_min_logp, beam_threshold=args.beam_threshold)
    word_lm, char_lm = f"word {args.order}-gram", f"char {args.char_order}-gram"

    def ours(fusion, device=cpu, batch_size=args.batch_size, layout="auto", numpy=False):
        def make(alpha, beta):
            return lambda lps: run_ours(lps, tokenizer, batch_size, device, numpy, fusion=fusion, lm_weight=alpha, word_bonus=beta, layout=layout, **beam_opts)
        return make

    decoders = [  # (name, lm, make(alpha, beta) -> decode(log_probs) -> texts, tuned betas)
        ("greedy", "-", lambda a, b: lambda lps: run_ours(lps, tokenizer, args.batch_size, cpu, greedy=True), None),
        ("ours, CPU", "-", lambda a, b: lambda lps: run_ours(lps, tokenizer, args.batch_size, cpu, **beam_opts), None),
        ("ours, CPU", word_lm, ours(word_fusion), betas),
        ("ours, CPU, numpy arrays", word_lm, ours(word_fusion, numpy=True), betas),
        ("ours, CPU, flat list", word_lm, ours(word_fusion, layout="flat"), betas),
    ]
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    try:  # the one-kernel layout (asr.decode.beam.triton_kernel) needs Triton, which CUDA builds of torch bring
        import triton  # noqa: F401

        triton_ok = gpu is not None
    except ImportError:
        triton_ok = False
    if gpu:  # the same LMs on the GPU: one batch of all test utterances, and batches of 64
        gpu_fusions = {word_lm: WordLMFusion(NGramLM.from_file(word_arpa, gpu), symbols), char_lm: TokenLMFusion(NGramLM.from_file(char_arpa, gpu), symbols)}
        decoders.append(("ours, CUDA", word_lm, ours(gpu_fusions[word_lm], gpu), betas))
        decoders.append(("ours, CUDA, batch 64", word_lm, ours(gpu_fusions[word_lm], gpu, 64), betas))
        decoders.append(("ours, CUDA, flat list, batch 64", word_lm, ours(gpu_fusions[word_lm], gpu, 64, "flat"), betas))
        if triton_ok:
            decoders.append(("ours, CUDA, triton", word_lm, ours(gpu_fusions[word_lm], gpu, layout="triton"), betas))
            decoders.append(("ours, CUDA, triton, batch 64", word_lm, ours(gpu_fusions[word_lm], gpu, 64, "triton"), betas))
    if "pyctcdecode" not in skip:
        decoders.append(("pyctcdecode", word_lm, lambda a, b: partial(run_pyctcdecode, decoder=pyctcdecode_decoder(symbols, word_arpa, a, b), beam=args.beam, token_min_logp=args.token_min_logp, beam_threshold=args.beam_threshold), betas))
    if "flashlight" not in skip:
        decoders.append(("flashlight-text LexiconDecoder", word_lm, lambda a, b: partial(run_flashlight, flashlight_lexicon_decoder(symbols, word_arpa, args.beam, args.top_k, args.beam_threshold, a, b)), betas))
    decoders.append(("ours, CPU", char_lm, ours(char_fusion), [0.0]))
    decoders.append(("ours, CPU, numpy arrays", char_lm, ours(char_fusion, numpy=True), [0.0]))
    decoders.append(("ours, CPU, flat list", char_lm, ours(char_fusion, layout="flat"), [0.0]))
    if gpu:
        decoders.append(("ours, CUDA", char_lm, ours(gpu_fusions[char_lm], gpu), [0.0]))
        decoders.append(("ours, CUDA, batch 64", char_lm, ours(gpu_fusions[char_lm], gpu, 64), [0.0]))
        decoders.append(("ours, CUDA, flat list, batch 64", char_lm, ours(gpu_fusions[char_lm], gpu, 64, "flat"), [0.0]))
        if triton_ok:
            decoders.append(("ours, CUDA, triton", char_lm, ours(gpu_fusions[char_lm], gpu, layout="triton"), [0.0]))
            decoders.append(("ours, CUDA, triton, batch 64", char_lm, ours(gpu_fusions[char_lm], gpu, 64, "triton"), [0.0]))
    if "flashlight" not in skip:
        decoders.append(("flashlight-text LexiconFreeDecoder", char_lm, lambda a, b: partial(run_flashlight, flashlight_lexicon_free_decoder(symbols, char_arpa, args.beam, args.top_k, args.beam_threshold, a)), [0.0]))

    dev_lps, dev_refs = sets["dev"]
    test_lps, test_refs = sets["test"]
    print(f"dev {len(dev_refs)} / test {len(test_refs)} utterances ({sum(len(x) for x in test_lps)} test frames); LMs in {workdir}", file=sys.stderr)
    rows = []
    for name, lm, make, tuned_betas in decoders:
        alpha = beta = None
        if tuned_betas is not None:  # each decoder gets its own best LM weight and bonus on dev
            grid = [(a, b) for a in alphas for b in tuned_betas]
            wers = [score_wer(dev_refs, make(a, b)(dev_lps)).rate for a, b in grid]
            alpha, beta = grid[min(range(len(grid)), key=wers.__getitem__)]
        decode = make(alpha, beta)
        elapsed = math.inf
        for _ in range(args.repeats):
            texts, seconds = timed(lambda: decode(test_lps))
            elapsed = min(elapsed, seconds)
        wer = score_wer(test_refs, texts).rate
        rows.append((name, lm, alpha, beta, wer, len(test_refs) / elapsed))
        print(f"  {name:<34} {lm:<14} alpha {alpha} beta {beta}  WER {wer:.2%}  {rows[-1][5]:8.1f} utt/s", file=sys.stderr, flush=True)

    by_batch = []
    for size in [int(b) for b in args.batch_sizes.split(",") if b]:
        _, _, alpha, beta, _, _ = next(row for row in rows if row[0] == "ours, CPU" and row[1] == word_lm)
        options = dict(fusion=word_fusion, lm_weight=alpha, word_bonus=beta, **beam_opts)
        elapsed = min(timed(lambda: run_ours(test_lps, tokenizer, size, cpu, **options))[1] for _ in range(args.repeats))
        by_batch.append(f"batch {size}: {len(test_refs) / elapsed:.0f}")

    ours_speed = {lm: speed for name, lm, _, _, _, speed in rows if name == "ours, CPU"}
    ours_wer = {lm: wer for name, lm, _, _, wer, _ in rows if name == "ours, CPU"}
    print(f"\nbeam {args.beam}, top-k {args.top_k}, token_min_logp {args.token_min_logp}, beam threshold {args.beam_threshold}, "
          f"{args.threads} torch thread(s), batch {args.batch_size}, "
          f"{len(test_refs)} test utterances; LM weight and bonus tuned per decoder on {len(dev_refs)} dev utterances\n")
    print("| decoder | LM | alpha, beta | test WER | utterances/s | ours (CPU) / this: speed | WER difference (ours - this) |")
    print("|---|---|---|---|---|---|---|")
    for name, lm, alpha, beta, wer, speed in rows:
        compare = name != "ours, CPU" and lm in ours_speed
        ratio = f"{ours_speed[lm] / speed:.2f}x" if compare else ""
        diff = f"{100 * (ours_wer[lm] - wer):+.2f} points" if compare else ""
        weights = f"{alpha}, {beta}" if alpha is not None else "-"
        print(f"| {name} | {lm} | {weights} | {wer:.2%} | {speed:.1f} | {ratio} | {diff} |")
    if by_batch:
        print(f"\nours, CPU, {word_lm}, utterances/s by batch size: " + ", ".join(by_batch))
    if gpu:
        print(f"\nGPU ({torch.cuda.get_device_name(gpu)}) vs flashlight-text on this CPU (target: a batch of 64 at least 10x faster):")
        for lm, peer in ((word_lm, "flashlight-text LexiconDecoder"), (char_lm, "flashlight-text LexiconFreeDecoder")):
            flashlight = next((speed for name, row_lm, _, _, _, speed in rows if name == peer and row_lm == lm), None)
            for ours_name in ("ours, CUDA, batch 64", "ours, CUDA, triton, batch 64"):
                ours_gpu = next((speed for name, row_lm, _, _, _, speed in rows if name == ours_name and row_lm == lm), None)
                if ours_gpu is None:
                    continue
                versus = f" = {ours_gpu / flashlight:.2f}x {peer} ({flashlight:.1f})" if flashlight else ""
                print(f"  {lm}: {ours_name}: {ours_gpu:.1f} utt/s{versus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
