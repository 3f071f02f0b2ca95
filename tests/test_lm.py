import json
import math
import random

import numpy as np
import pytest
import torch

from asr.cli import main
from asr.decode.kn import LMBuildError, estimate_kneser_ney
from asr.decode.arpa import ArpaError, arpa_lines, read_arpa, write_arpa
from asr.decode.lm import NGramLM
from asr.decode.lm_file import read_arrays, write_arrays

LN10 = math.log(10)

# A hand-written trigram file: the expected scores below are worked out from these numbers.
TINY_ARPA = """\
\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0\t<s>\t-0.5
-0.7\t</s>
-0.6\ta\t-0.3
-0.8\tb\t-0.2
-2.0\t<unk>

\\2-grams:
-0.3\t<s> a\t-0.1
-0.4\ta b\t-0.25
-0.2\tb </s>

\\3-grams:
-0.05\t<s> a b

\\end\\
"""


def write(tmp_path, text, name="lm.arpa"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_scores_follow_the_backoff_rule_worked_by_hand(tmp_path):
    lm = NGramLM.from_file(write(tmp_path, TINY_ARPA))
    expected = {
        # listed trigram / bigram / unigram
        ("<s>", "a", "b"): -0.05,
        ("x", "a", "b"): -0.4,  # context (x a) unlisted: bow 0, then the bigram (a b)
        ("a", "b", "</s>"): -0.2,  # (a b </s>) unlisted: bow(a b) = -0.25 ... but (a b) is a listed context
        ("<s>", "a", "a"): -0.1 + -0.3 + -0.6,  # bow(<s> a) + bow(a) + P(a)
        ("b", "b", "a"): -0.2 + -0.6,  # bow(b b) unlisted = 0, then bow(b) + P(a)
    }
    expected[("a", "b", "</s>")] = -0.25 + -0.2  # bow(a b) + P(</s> | b)
    # the state after each: the longest end of the history that is a listed 1- or 2-gram
    after = {("<s>", "a", "b"): ("a", "b"), ("x", "a", "b"): ("a", "b"), ("a", "b", "</s>"): ("b", "</s>"),
             ("<s>", "a", "a"): ("a",), ("b", "b", "a"): ("a",)}
    for (h1, h2, w), log10p in expected.items():
        state = lm.start_state(1) if h1 == "<s>" else np.zeros(1, dtype=np.int64)  # 0: the empty context
        for h in ([h2] if h1 == "<s>" else [h1, h2]):
            _, state = lm.score(state, np.array([lm.word_id(h)]))
        logp, new_state = lm.score(state, np.array([lm.word_id(w)]))
        assert logp.item() == pytest.approx(log10p * LN10, abs=1e-5), (h1, h2, w)
        assert lm.context(new_state.item()) == after[(h1, h2, w)]
    # an out-of-vocabulary word scores as <unk>
    assert lm.word_id("zebra") == lm.unk
    assert lm.score_sentence(["zebra"], eos=False) == pytest.approx((-0.5 - 2.0) * LN10, abs=1e-5)


def test_missing_unk_gets_kenlm_default(tmp_path):
    text = TINY_ARPA.replace("ngram 1=5", "ngram 1=4").replace("-2.0\t<unk>\n", "")
    lm = NGramLM.from_file(write(tmp_path, text))
    logp, _ = lm.score(np.array([0]), np.array([lm.unk]))
    assert logp.item() == pytest.approx(-100 * LN10, rel=1e-6)


def test_arpa_round_trip(tmp_path):
    arpa = read_arpa(write(tmp_path, TINY_ARPA))
    write_arpa(tmp_path / "again.arpa", arpa)
    again = read_arpa(tmp_path / "again.arpa")
    assert again.order == 3
    for table, table_again in zip(arpa.ngrams, again.ngrams):
        assert table.keys() == table_again.keys()
        for key in table:
            assert table[key] == pytest.approx(table_again[key], abs=1e-7)


LOADERS = pytest.mark.parametrize("load", [read_arpa, NGramLM.from_file], ids=["read_arpa", "from_file"])


@LOADERS
@pytest.mark.parametrize(
    "changes, line, message",
    [
        ([("ngram 2=3", "ngram 2=4")], 18, "says ngram 2=4, but the section has 3"),
        ([("ngram 2=3", "ngram 2=three")], 3, "count 'three'"),
        ([("ngram 3=1\n", "")], 17, "\\3-grams: section has no 'ngram 3=count' line"),
        ([("-0.4\ta b\t-0.25", "-0.4\ta b\tabc")], 15, "back-off weight 'abc' is not a number"),
        ([("-0.8\tb\t-0.2", "x\tb\t-0.2")], 10, "log probability 'x' is not a number"),
        ([("-0.8\tb\t-0.2", "nan\tb\t-0.2")], 10, "log probability 'nan' is not a number"),
        ([("-0.8\tb\t-0.2", "-1_0\tb\t-0.2")], 10, "log probability '-1_0' is not a number"),
        ([("-0.2\tb </s>", "-0.2\tb")], 16, "needs 3 or 4 fields, found 2"),
        ([("-0.2\tb </s>", "-0.2\tb c")], 16, "word 'c' is not among the 1-grams"),
        ([("\\2-grams:", "\\3-grams:")], 13, "expected the \\2-grams: section"),
        ([("\\3-grams:\n-0.05\t<s> a b\n\n", "")], 18, "before the \\3-grams: section"),
        ([("-0.05\t<s> a b", "-0.05\tb a b")], 19, "context 'b a' of this 3-gram is not listed as a 2-gram"),
        # the contexts of a section are checked all at once, yet the first offending line is the
        # one named, also before an error on a later line of the section
        ([("ngram 3=1", "ngram 3=4"), ("-0.05\t<s> a b\n", "-0.05\t<s> a b\n-0.1\tb a b\n-0.1\ta a b\nx\tb a </s>\n")],
         20, "context 'b a' of this 3-gram is not listed"),
        ([("ngram 2=3", "ngram 2=4"), ("-0.2\tb </s>\n", "-0.2\tb </s>\n-0.3\tb </s>\n")],
         17, "2-gram 'b </s>' is listed twice (first at line 16)"),
        ([("ngram 1=5", "ngram 1=6"), ("-2.0\t<unk>\n", "-2.0\t<unk>\n-0.9\ta\n")], 12, "1-gram 'a' is listed twice (first at line 9)"),
    ],
)
def test_malformed_arpa_names_the_line(tmp_path, load, changes, line, message):
    text = TINY_ARPA
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    path = write(tmp_path, text)
    with pytest.raises(ArpaError) as e:
        load(path)
    assert f"{path}:{line}:" in str(e.value)
    assert message in str(e.value)


@LOADERS
def test_malformed_arpa_without_header_or_end(tmp_path, load):
    with pytest.raises(ArpaError, match="no \\\\data\\\\ header"):
        load(write(tmp_path, "just some text\n"))
    with pytest.raises(ArpaError, match=r"lm.arpa:20: file ends without \\end\\"):
        load(write(tmp_path, TINY_ARPA.replace("\\end\\\n", "")))
    with pytest.raises(ArpaError, match=r"lm.arpa:17: file ends without \\end\\"):
        load(write(tmp_path, TINY_ARPA.split("\\3-grams:")[0]))
    with pytest.raises(ArpaError, match="no such (ARPA|language model) file"):
        load(tmp_path / "nope.arpa")


def random_corpus(seed=0, num=300):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    return [[rng.choice(words[: rng.randint(3, 40)]) for _ in range(rng.randint(1, 9))] for _ in range(num)]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_probabilities_sum_to_one(tmp_path, order):
    sentences = random_corpus()
    write_arpa(tmp_path / "kn.arpa", estimate_kneser_ney(sentences, order))
    lm = NGramLM.from_file(tmp_path / "kn.arpa")
    vocab = np.array([i for i, w in enumerate(lm.words) if w != "<s>"])
    rng = random.Random(1)
    histories = [[], ["w1"], ["w0", "w2"], ["unseen", "w3"]] + [rng.choice(sentences)[:3] for _ in range(20)]
    for history in histories:
        state = lm.start_state(1)
        for w in history:
            _, state = lm.score(state, np.array([lm.word_id(w)]))
        logp, _ = lm.score(np.repeat(state, len(vocab)), vocab)
        assert np.logaddexp.reduce(logp.astype(np.float64)) == pytest.approx(0.0, abs=1e-5), history


def test_kneser_ney_discounts_counts(tmp_path):
    # a word seen more often gets more probability, an unseen one only the <unk> share
    arpa = estimate_kneser_ney([["a", "a", "b"], ["a", "c"], ["a"]], 2)
    unigrams = {w[0]: p for w, (p, _) in arpa.ngrams[0].items()}
    assert unigrams["a"] > unigrams["b"] and unigrams["<unk>"] < unigrams["c"]
    with pytest.raises(LMBuildError):
        estimate_kneser_ney([[]], 2)
    with pytest.raises(LMBuildError):
        estimate_kneser_ney([["<s>"]], 2)


def random_arpa(seed, order=4, num_words=30, per_order=200):
    """A random ARPA text: every n-gram's context is listed (the format requires it), its suffix
    not always (so states back off over unlisted ends); some back-off weights left out, lines
    shuffled, blank lines between them, no <unk>."""
    rng = random.Random(seed)
    words = ["<s>", "</s>"] + [f"v{i}" for i in range(num_words)]
    tables = [{(w,): None for w in words}]
    for n in range(2, order + 1):
        lower, grams = [g for g in tables[-1] if g[-1] != "</s>"], {}
        while len(grams) < per_order:
            grams[rng.choice(lower) + (rng.choice(words[1:]),)] = None
        tables.append(grams)
    lines = ["\\data\\"] + [f"ngram {n}={len(t)}" for n, t in enumerate(tables, start=1)]
    for n, table in enumerate(tables, start=1):
        lines.append(f"\n\\{n}-grams:")
        for gram in rng.sample(sorted(table), len(table)):
            bow = f"\t{rng.uniform(-1, 0):.4f}" if n < order and rng.random() < 0.7 else ""
            lines.append(f"{rng.uniform(-5, -0.1):.4f}\t{' '.join(gram)}{bow}" + "\n" * (rng.random() < 0.05))
    return "\n".join(lines + ["\\end\\\n"])


def assert_same_lm(a, b):
    assert vars(a).keys() == vars(b).keys()
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and np.array_equal(value, other), name
        else:
            assert value == other, name


def test_streamed_file_builds_the_same_lm_as_the_dicts(tmp_path):
    # from_file never builds the dicts; NGramLM(read_arpa(...)) converts them: every tensor agrees
    paths = [write(tmp_path, TINY_ARPA), write(tmp_path, random_arpa(seed=1), "random4.arpa")]
    for order in (1, 2, 3, 4):
        paths.append(tmp_path / f"kn{order}.arpa")
        write_arpa(paths[-1], estimate_kneser_ney(random_corpus(seed=order), order))
    for path in paths:
        assert_same_lm(NGramLM.from_file(path), NGramLM(read_arpa(path)))
    # an Arpa built in memory goes through the same reader (its numbers written exactly)
    arpa = estimate_kneser_ney(random_corpus(seed=2), 3)
    exact = read_arpa(write(tmp_path, "".join(arpa_lines(arpa, exact=True)), "exact.arpa"))
    assert exact == arpa
    assert_same_lm(NGramLM(arpa), NGramLM.from_file(tmp_path / "exact.arpa"))


@pytest.mark.parametrize("suffix, magic", [(".gz", b"\x1f\x8b"), (".bz2", b"BZh"), (".xz", b"\xfd7zXZ")])
def test_compressed_arpa_round_trip(tmp_path, suffix, magic):
    # written compressed by its suffix, read back by its first bytes, whatever its name
    arpa = estimate_kneser_ney(random_corpus(seed=5), 3)
    write_arpa(tmp_path / "plain.arpa", arpa)
    write_arpa(tmp_path / f"lm.arpa{suffix}", arpa)
    data = (tmp_path / f"lm.arpa{suffix}").read_bytes()
    assert data.startswith(magic) and len(data) < (tmp_path / "plain.arpa").stat().st_size
    (tmp_path / "renamed.arpa").write_bytes(data)
    assert read_arpa(tmp_path / "renamed.arpa") == read_arpa(tmp_path / f"lm.arpa{suffix}") == read_arpa(tmp_path / "plain.arpa")
    assert_same_lm(NGramLM.from_file(tmp_path / f"lm.arpa{suffix}"), NGramLM.from_file(tmp_path / "plain.arpa"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plain.arpa", f"lm.arpa{suffix}", "renamed.arpa"])  # no temporaries left


@LOADERS
def test_truncated_or_undecodable_arpa_names_the_line(tmp_path, load):
    write_arpa(tmp_path / "lm.arpa.gz", estimate_kneser_ney(random_corpus(seed=6), 3))
    data = (tmp_path / "lm.arpa.gz").read_bytes()
    (tmp_path / "cut.arpa.gz").write_bytes(data[: len(data) // 2])  # a download that stopped half way
    with pytest.raises(ArpaError, match=r"cut\.arpa\.gz:\d+: cannot decompress the file after line \d+"):
        load(tmp_path / "cut.arpa.gz")
    latin1 = TINY_ARPA.replace("-0.8\tb\t-0.2", "-0.8\tcaf\u00e9\t-0.2").encode("latin-1")
    (tmp_path / "latin1.arpa").write_bytes(latin1)
    with pytest.raises(ArpaError, match=r"latin1\.arpa:10: not UTF-8 text \(byte 0xe9 at column 9\)"):
        load(tmp_path / "latin1.arpa")
    with pytest.raises(ArpaError, match="no such (ARPA|language model) file"):
        load(tmp_path / "missing.arpa.gz")


def test_compiled_lm_loads_the_same_tables(tmp_path, capsys):
    # `asr lm compile` saves the tables; from_file maps them back in, every tensor the same
    for name, text in (("tiny.arpa", TINY_ARPA), ("random4.arpa", random_arpa(seed=9))):
        arpa = write(tmp_path, text, name)
        compiled = tmp_path / f"{name}.bin"
        assert main(["lm", "compile", str(arpa), "-o", str(compiled)]) == 0
        assert f"{compiled}: order" in capsys.readouterr().out
        assert_same_lm(NGramLM.from_file(compiled), NGramLM.from_file(arpa))
    lm = NGramLM.from_file(tmp_path / "tiny.arpa.bin")
    assert lm.score_sentence(["a", "b"]) == pytest.approx((-0.3 - 0.05 - 0.25 - 0.2) * LN10, abs=1e-6)  # <s> a, a b, backed off: b </s>
    assert main(["lm", "compile", str(tmp_path / "missing.arpa"), "-o", str(tmp_path / "x.bin")]) == 2
    assert not (tmp_path / "x.bin").exists()


def test_compiled_lm_that_is_not_ours_or_is_damaged_is_a_clear_error(tmp_path):
    arpa = write(tmp_path, TINY_ARPA)
    NGramLM.from_file(arpa).save(tmp_path / "good.bin")
    good, metadata = read_arrays(tmp_path / "good.bin")
    good = {k: np.array(v) for k, v in good.items()}
    model = json.loads(metadata["model"])

    def check(message, arrays=good, model=model, changes={}, name="bad.bin"):
        write_arrays(tmp_path / name, arrays, {**metadata, "model": json.dumps(model), **changes})
        with pytest.raises(ArpaError, match=message) as e:
            NGramLM.from_file(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)

    check("not a language model file of ours", changes={"format": "something else"})
    check("version '99'; this asr reads version 2", changes={"version": "99"})
    check("its model description is not JSON", changes={"model": "{"})
    check("lacks or garbles 'next_state'", arrays={k: v for k, v in good.items() if k != "next_state"})
    check("lacks or garbles 'words'", model={k: v for k, v in model.items() if k != "words"})
    check("'logp' is float64", arrays={**good, "logp": good["logp"].astype(np.float64)})
    check("an index out of range", arrays={**good, "next_state": np.full_like(good["next_state"], 10**6)})
    check("a word listed twice", model={**model, "words": model["words"][:-1] + model["words"][:1]})
    window = model["window"]
    check("an index out of range", model={**model, "window": 1}, arrays={**good, "padded_keys": good["padded_keys"][: len(good["padded_keys"]) - window + 1]})
    check("inconsistent \\(bits 1000000000", model={**model, "bits": 10**9})
    data = (tmp_path / "good.bin").read_bytes()
    for name, damaged in [
        ("cut.bin", data[: len(data) // 2]),  # a copy that stopped half way: the arrays do not fill the file
        ("long.bin", data + b"\0" * 8),  # bytes no array owns
        ("header.bin", data[:30] + b"\xff" * 10 + data[40:]),  # a header that is not JSON
        ("huge.bin", (10**12).to_bytes(8, "little") + data[8:]),  # a header size past the end
    ]:
        (tmp_path / name).write_bytes(damaged)
        with pytest.raises(ArpaError, match=f"{name}: not a language model file of ours"):
            NGramLM.from_file(tmp_path / name)


def save_torch_archive(lm, path):
    """What `NGramLM.save` wrote before its arrays format: a torch.save archive (format version 1)."""
    data = {
        "format": "asr.ngram", "version": 1, "order": lm.order, "words": lm.words, "num_contexts": lm.num_contexts,
        "bos_state": lm._bos_state, "bits": lm._bits, "window": lm._windows.shape[1],
        "padded_keys": lm._padded, "first": lm._first, "logp": lm.logp, "next_state": lm.next_state,
        "ends": lm._ends, "bows": lm._bows, "parent": lm._parent, "last": lm._last,
    }
    torch.save({k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in data.items()}, path)
    return data


def test_an_older_asrs_torch_archive_loads_where_torch_is(tmp_path):
    # files `asr lm compile` wrote before the arrays format still load (torch's weights_only
    # loader reads them), to the same tables; one that holds more than tensors and numbers does not
    arpa = write(tmp_path, random_arpa(seed=9))
    lm = NGramLM.from_file(arpa)
    data = save_torch_archive(lm, tmp_path / "old.bin")
    assert (tmp_path / "old.bin").read_bytes()[:4] == b"PK\x03\x04"
    assert_same_lm(NGramLM.from_file(tmp_path / "old.bin"), lm)
    assert main(["lm", "compile", str(tmp_path / "old.bin"), "-o", str(tmp_path / "new.bin")]) == 0  # converts it
    assert_same_lm(NGramLM.from_file(tmp_path / "new.bin"), lm)
    for change, message in [({"version": 99}, "torch archives of version 1"), ({"evil": Exception("unpickling an object")}, "not a readable torch archive")]:
        torch.save({**{k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in data.items()}, **change}, tmp_path / "bad.bin")
        with pytest.raises(ArpaError, match=message):
            NGramLM.from_file(tmp_path / "bad.bin")


def backoff_log10(ngrams, history, word):
    """log10 P(word | history) by the back-off rule, straight from an Arpa's dicts."""
    order = len(ngrams)
    h = tuple(history)[len(history) - min(len(history), order - 1) :]
    bows = 0.0
    while h + (word,) not in ngrams[len(h)]:
        bows += ngrams[len(h) - 1].get(h, (0.0, 0.0))[1]
        h = h[1:]
    return bows + ngrams[len(h)][h + (word,)][0]


def test_random_4gram_scores_follow_the_backoff_rule(tmp_path):
    path = write(tmp_path, random_arpa(seed=7))
    lm, arpa = NGramLM.from_file(path), read_arpa(path)
    words = [w for (w,) in arpa.ngrams[0] if w != "<s>"]
    ids = np.array([lm.word_id(w) for w in words])
    rng = random.Random(8)
    # histories that follow listed n-grams (long listed contexts) and random ones
    histories = [list(rng.choice(list(arpa.ngrams[3])))[: rng.randint(0, 4)] for _ in range(40)]
    histories += [[rng.choice(words) for _ in range(rng.randint(0, 6))] for _ in range(40)]
    for history in histories:
        state = np.zeros(1, dtype=np.int64)  # the empty context: no <s> in front
        for w in history:
            _, state = lm.score(state, np.array([lm.word_id(w)]))
        logp, after = lm.score(np.repeat(state, len(ids)), ids)
        expected = [backoff_log10(arpa.ngrams, history, w) * LN10 for w in words]
        assert logp.tolist() == pytest.approx(expected, abs=1e-4), history
        # the torch layouts' lookup (NGramTensors.score) answers the same, bit for bit
        logp_t, after_t = lm.score(torch.from_numpy(np.repeat(state, len(ids))), torch.from_numpy(ids))
        assert np.array_equal(logp_t.numpy(), logp) and np.array_equal(after_t.numpy(), after)


def test_scores_match_kenlm(tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module (test extra) checks our ARPA reader and scorer")
    sentences = random_corpus(seed=3)
    path = tmp_path / "kn.arpa"
    write_arpa(path, estimate_kneser_ney(sentences, 4))
    ours = NGramLM.from_file(path)
    reference = kenlm.Model(str(path))
    rng = random.Random(4)
    tests = [rng.choice(sentences) for _ in range(30)] + [["w1", "unseen", "w2", "w3", "w39"], ["w5"] * 7]
    for words in tests:
        # kenlm's per-word log10 scores, </s> last
        expected = [score for score, _, _ in reference.full_scores(" ".join(words))]
        state = ours.start_state(1)
        got = []
        for w in [*words, "</s>"]:
            logp, state = ours.score(state, np.array([ours.word_id(w)]))
            got.append(logp.item() / LN10)
        assert got == pytest.approx(expected, abs=2e-5), words


def test_lm_build_cli(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat\nthe dog sat\n\nA cat ran\n")
    assert main(["lm", "build", str(text), "-o", str(tmp_path / "lm.arpa"), "--order", "2"]) == 0
    arpa = read_arpa(tmp_path / "lm.arpa")
    assert ("a",) in arpa.ngrams[0] and ("the", "cat") in arpa.ngrams[1]  # normalized to lower case
    assert main(["lm", "build", str(text), "-o", str(tmp_path / "chars.arpa"), "--order", "3", "--unit", "char"]) == 0
    chars = read_arpa(tmp_path / "chars.arpa")
    assert ("|",) in chars.ngrams[0] and ("t", "h", "e") in chars.ngrams[2]
    assert main(["lm", "build", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.arpa")]) == 2
    assert main(["lm", "build", str(text), "-o", str(tmp_path / "lm.arpa.gz"), "--order", "2"]) == 0  # gzip, by the name
    assert (tmp_path / "lm.arpa.gz").read_bytes()[:2] == b"\x1f\x8b" and read_arpa(tmp_path / "lm.arpa.gz") == arpa


def test_bucket_lookup_finds_every_key_and_nothing_else(tmp_path):
    # the lookup is exact whatever the keys: here half of them crowd into one bucket
    lm = NGramLM.from_file(write(tmp_path, TINY_ARPA))
    rng = np.random.default_rng(5)
    spread = rng.integers(-(2**62), 2**62, 300) * 2
    crowded = np.arange(300) * 2 + 10**15  # one bucket (same top bits)
    lm.keys = np.unique(np.concatenate([spread, crowded]))  # sorted, distinct, all even
    lm._index_buckets()
    assert lm._windows.shape[1] >= 300  # the crowded bucket's run
    found, where = lm._lookup(lm.keys[None, :])
    assert found.all() and np.array_equal(where[0], np.arange(lm.keys.size))
    absent = np.concatenate([lm.keys + 1, [2**63 - 1, -(2**63)]])  # odd keys, and the extremes
    found, where = lm._lookup(absent[None, :])
    assert not found.any() and bool((where <= lm.keys.size).all())  # the entry past the end at most
