"""Loading an ARPA language model: `NGramLM.from_file` (streams the file into arrays), the same
on what `asr lm compile` made of the file (its tables, memory-mapped), the dict path
`NGramLM(read_arpa(path))`, and KenLM's `kenlm.Model(path)` (its probing hash tables), each in its
own process, on the same file. Prints seconds and peak memory for each and the ratios.

    python scripts/bench_lm_load.py --words 200000 --bigrams 600000 --trigrams 700000
    python scripts/bench_lm_load.py --arpa 3-gram.arpa                 # a real file
    python scripts/bench_lm_load.py ... --old-tree /tmp/base           # the dict path as an older checkout has it

Without --arpa it writes a synthetic file shaped like a pruned Kneser-Ney model: every listed
n-gram's context and its suffix (all words but the first) are listed too (KenLM's loader rejects a
file whose n-gram has no listed suffix). Memory is each process's peak resident set (VmHWM) minus
what it held after its imports, i.e. what loading added; bytes per n-gram divide that by the number
of n-grams. `--old-tree DIR` runs the dict path with DIR first on PYTHONPATH (e.g. `git archive`
of the commit before this loader), to compare with what was there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synth_arpa(path: Path, counts: list[int], seed: int = 0) -> None:
    """Write an ARPA file with counts[n-1] n-grams of each order (counts[0] words, <s> </s> <unk>
    among them): random log probs, a back-off weight on every n-gram that is some n-gram's context."""
    rng = np.random.default_rng(seed)
    num_words = counts[0]
    words = ["<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(num_words - 3)]
    ids = [np.arange(num_words)[:, None]]  # per order: (count, n) word ids
    contexts = [np.zeros(num_words, dtype=np.int64)]  # row of each n-gram's context among the (n-1)-grams
    suffixes = [np.zeros(num_words, dtype=np.int64)]  # row of its suffix among the (n-1)-grams
    for n, count in enumerate(counts[1:], start=2):
        below, below_context, below_suffix = ids[-1], contexts[-1], suffixes[-1]
        # an n-gram = an (n-1)-gram g + the last word of an (n-1)-gram h whose context is g's suffix:
        # g is its context and h its suffix, both listed
        by_context = np.argsort(below_context, kind="stable")
        group_start = np.searchsorted(below_context[by_context], np.arange(len(ids[-2]) if n > 2 else 1))
        group_end = np.searchsorted(below_context[by_context], np.arange(len(ids[-2]) if n > 2 else 1), side="right")
        found = np.zeros(0, dtype=np.int64)
        for _ in range(100):
            g = (len(below) * rng.random(4 * count) ** 3).astype(np.int64)  # skewed: the first rows are frequent
            start, end = group_start[below_suffix[g]], group_end[below_suffix[g]]
            g, start, end = g[end > start], start[end > start], end[end > start]
            h = by_context[start + (rng.random(len(g)) * (end - start)).astype(np.int64)]
            last = below[h, -1]
            keep = (below[g, -1] != 1) & (last != 0)  # nothing follows </s>, <s> is never predicted
            found = np.unique(np.concatenate([found, g[keep] * num_words + last[keep]]))
            if len(found) >= count:
                break
        else:
            raise SystemExit(f"could not find {count} distinct {n}-grams over these {n - 1}-grams: ask for fewer")
        found = np.sort(rng.choice(found, count, replace=False))
        g, last = found // num_words, found % num_words
        # the suffix of (g, last): the (n-1)-gram (suffix of g, last), found among the sorted keys of order n-1
        below_keys = below_context * num_words + below[:, -1]
        by_key = np.argsort(below_keys)
        suffix = by_key[np.searchsorted(below_keys[by_key], below_suffix[g] * num_words + last)]
        ids.append(np.concatenate([below[g], last[:, None]], axis=1))
        contexts.append(g)
        suffixes.append(suffix)
    order = len(counts)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\\data\\\n" + "".join(f"ngram {n}={c}\n" for n, c in enumerate(counts, start=1)))
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            logp = rng.uniform(-6.0, -0.3, len(ids[n - 1]))
            if n == 1:
                logp[0] = -99.0  # <s>
            has_bow = np.zeros(len(ids[n - 1]), dtype=bool)
            if n < order:
                has_bow[contexts[n]] = True
            bow = rng.uniform(-1.0, 0.0, len(ids[n - 1]))
            for row in range(0, len(ids[n - 1]), 100_000):
                chunk = range(row, min(row + 100_000, len(ids[n - 1])))
                f.write("".join(
                    f"{logp[i]:.6f}\t{' '.join(words[w] for w in ids[n - 1][i])}" + (f"\t{bow[i]:.6f}\n" if has_bow[i] else "\n")
                    for i in chunk
                ))
        f.write("\n\\end\\\n")


def child(loader: str, path: str) -> None:
    """Load `path` one way in this process and print what it cost, as JSON."""

    def memory_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))

    if loader == "kenlm":
        import kenlm

        load = lambda: kenlm.Model(path)  # noqa: E731
    else:
        from asr.decode.lm import NGramLM

        if loader in ("ours", "compiled"):  # the ARPA file, or what `asr lm compile` made of it
            load = lambda: NGramLM.from_file(path if loader == "ours" else path + ".bin")  # noqa: E731
        else:
            try:
                from asr.decode.arpa import read_arpa
            except ImportError:  # an older tree: read_arpa lived in lm.py
                from asr.decode.lm import read_arpa
            load = lambda: NGramLM(read_arpa(path))  # noqa: E731
    before = memory_kib("VmRSS:")
    started = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "peak_kib": memory_kib("VmHWM:") - before, "held_kib": memory_kib("VmRSS:") - before}
    if loader != "kenlm":  # a fingerprint of the tables (arrays, or an older tree's tensors), to check that both paths build the same model
        result["fingerprint"] = [model.num_contexts, len(model.keys), float(np.asarray(model.logp, dtype=np.float64).sum()),
                                 int(np.asarray(model.next_state).sum()), float(np.asarray(model._bows, dtype=np.float64).sum())]
    print(json.dumps(result))


def run_child(loader: str, path: Path, pythonpath: str | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, __file__, "--child", loader, "--arpa", str(path)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{loader} loader failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arpa", help="an ARPA file to load (default: write a synthetic one)")
    parser.add_argument("--words", type=int, default=200_000, help="1-grams of the synthetic file")
    parser.add_argument("--bigrams", type=int, default=600_000, help="2-grams of the synthetic file")
    parser.add_argument("--trigrams", type=int, default=700_000, help="3-grams of the synthetic file (0: a bigram model)")
    parser.add_argument("--fourgrams", type=int, default=0, help="4-grams of the synthetic file")
    parser.add_argument("--old-tree", help="run the dict path with this directory first on PYTHONPATH")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "compiled", "old", "kenlm"], help="loaders not to run")
    parser.add_argument("--child", choices=["ours", "compiled", "old", "kenlm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.arpa)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.arpa) if args.arpa else Path(tmp) / "synthetic.arpa"
        if not args.arpa:
            counts = [c for c in (args.words, args.bigrams, args.trigrams, args.fourgrams) if c]
            started = time.perf_counter()
            synth_arpa(path, counts)
            print(f"wrote {path}: {' '.join(f'{n}-grams {c}' for n, c in enumerate(counts, start=1))}, "
                  f"{path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - started:.0f} s")
        path.read_bytes()  # the page cache holds it for every loader alike
        with open(path, encoding="utf-8") as f:
            num_ngrams = sum(int(line.split("=")[1]) for line in f if line.startswith("ngram "))
        if "compiled" not in args.skip:  # `asr lm compile`, beside the file
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "asr", "lm", "compile", str(path), "-o", f"{path}.bin"], check=True, capture_output=True)
            print(f"asr lm compile: {time.perf_counter() - started:.1f} s, {Path(f'{path}.bin').stat().st_size / 2**20:.0f} MiB")
        results = {}
        for loader in ("ours", "compiled", "old", "kenlm"):
            if loader in args.skip:
                continue
            results[loader] = run_child(loader, path, args.old_tree if loader == "old" else None)
    names = {"ours": "NGramLM.from_file", "compiled": "NGramLM.from_file (compiled)", "old": "NGramLM(read_arpa(path))" + (f" [{args.old_tree}]" if args.old_tree else ""),
             "kenlm": "kenlm.Model (probing)"}
    print(f"{num_ngrams} n-grams in all")
    for loader, r in results.items():
        print(f"{names[loader]:<40} {r['seconds']:7.2f} s   peak +{r['peak_kib'] / 2**10:7.0f} MiB "
              f"({r['peak_kib'] * 1024 / num_ngrams:5.0f} bytes per n-gram), held after +{r['held_kib'] / 2**10:7.0f} MiB")
    for mine in ("ours", "compiled"):
        for other in ("kenlm", "old"):
            if mine in results and other in results:
                a, b = results[mine], results[other]
                print(f"{mine} / {other}: time {a['seconds'] / b['seconds']:.2f}, peak memory {a['peak_kib'] / b['peak_kib']:.2f}")
    for mine, other in (("compiled", "ours"), ("old", "ours")):
        if mine in results and other in results:
            same = results[mine]["fingerprint"] == results[other]["fingerprint"]
            print(f"{mine} builds the same model as {other} (fingerprint of the tensors): {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
