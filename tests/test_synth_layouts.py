"""The built-in corpus in the TIMIT and LibriSpeech layouts, read back by the corpus readers,
and `unit: phone` training + PER evaluation end to end on the TIMIT-layout corpus."""

import re

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.data.corpora import prepare_corpus
from asr.data.manifest import Utterance, read_manifest
from asr.data.synth_layouts import (
    PhoneMappingError,
    espeak_to_timit,
    timit_segments,
    write_librispeech_layout,
    write_timit_layout,
)
from asr.phones import PHONES_61
from conftest import TINY_OVERRIDES

NUM = 30  # utterances: 24 train, 3 dev, 3 test


def test_espeak_mapping_by_accent():
    assert espeak_to_timit("tS", rhotic=True) == ("tcl", "ch")
    assert espeak_to_timit("A@", rhotic=True) == ("aa", "r")
    assert espeak_to_timit("A@", rhotic=False) == ("aa",)
    assert espeak_to_timit("aa", rhotic=True) == ("ae",) and espeak_to_timit("aa", rhotic=False) == ("aa",)
    with pytest.raises(PhoneMappingError, match="u1: eSpeak phoneme 'Q9'"):
        espeak_to_timit("Q9", rhotic=True, where="u1")


def test_timit_segments_by_hand():
    audio = np.zeros(16000, dtype=np.float32)  # 1 s
    utt = Utterance(
        id="u", audio="", duration=1.0, text="x", speaker="en-us+m1", phones="k A@ ; i l m",
        extra={"phone_times": [0.1, 0.3, 0.5, 0.6, 0.7, 0.8], "phone_ends": [0.3, 0.5, 0.6, 0.7, 0.7, 0.9]},
    )  # fmt: skip
    assert timit_segments(utt, audio) == [
        (0, 1600, "h#"),
        (1600, 3200, "kcl"), (3200, 4800, "k"),  # a stop split at its middle
        (4800, 6400, "aa"), (6400, 9600, "r"),  # the glide ';' merged into the phone before it
        (9600, 11200, "iy"),  # the "l" with no length is left out
        (11200, 12800, "pau"),  # eSpeak's pause: from where "i" ends to where "m" starts
        (12800, 14400, "m"),
        (14400, 16000, "h#"),
    ]  # fmt: skip
    old = Utterance(id="old", audio="", duration=1.0, text="x", phones="k", extra={"phone_times": [0.1]})
    with pytest.raises(PhoneMappingError, match="old: needs .* `phone_ends`"):
        timit_segments(old, audio)


@pytest.fixture(scope="module")
def timit_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_timit")
    write_timit_layout(root / "timit", num_utterances=NUM, seed=0, progress=False)
    result = prepare_corpus("timit", root / "timit", root / "prepared")
    return root, result


def test_timit_layout_reads_back(timit_corpus):
    root, result = timit_corpus
    assert result.utterances == {"train": 24, "dev": 3, "test": 3}
    wavs = sorted((root / "timit").rglob("*.WAV"))
    assert len(wavs) == NUM and all(sf.info(w).format == "NIST" for w in wavs)
    assert {p.parent.parent.parent.name for p in wavs} == {"TRAIN", "TEST"}
    for split, path in result.manifests.items():
        for utt in read_manifest(path):
            phones = utt.phones.split()
            assert set(phones) <= set(PHONES_61) and phones[0] == phones[-1] == "h#"
            assert re.fullmatch(r"[a-z']+( [a-z']+)*", utt.text)
    num_pauses = 0
    for wav in wavs:
        # .PHN segments tile the whole file, in order
        rows = [line.split() for line in wav.with_suffix(".PHN").read_text().splitlines()]
        assert int(rows[0][0]) == 0 and int(rows[-1][1]) == sf.info(wav).frames
        assert all(int(a[1]) == int(b[0]) for a, b in zip(rows, rows[1:]))
        num_pauses += sum(row[2] == "pau" for row in rows)
        # .WRD: the sentence's words, in order, each starting and ending on a phone boundary of .PHN
        words = wav.with_suffix(".TXT").read_text().split(maxsplit=2)[2].rstrip(".\n").lower()
        spans = [line.split() for line in wav.with_suffix(".WRD").read_text().splitlines()]
        assert [span[2] for span in spans] == words.split()
        edges = {int(row[0]) for row in rows if row[2] != "h#"} | {int(row[1]) for row in rows if row[2] != "h#"}
        assert all(int(a) < int(b) and {int(a), int(b)} <= edges for a, b, _ in spans)
        assert all(int(a[1]) <= int(b[0]) for a, b in zip(spans, spans[1:]))
        assert int(spans[0][0]) == int(rows[1][0]) and int(spans[-1][1]) == int(rows[-1][0])  # speech, no h#
        labels = {int(row[0]): row[2] for row in rows}
        assert all(labels[int(b[0])] != "pau" for b in spans)  # no word starts with a pause
    assert num_pauses > 0  # eSpeak pauses inside some sentences


@pytest.fixture(scope="module")
def librispeech_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_librispeech")
    tree = write_librispeech_layout(root, num_utterances=NUM, seed=0, progress=False)
    return root, prepare_corpus("librispeech", tree, root / "prepared", progress=False)


def test_librispeech_layout_reads_back(librispeech_corpus):
    _, result = librispeech_corpus
    assert result.problems == []
    assert result.utterances == {"train-clean-100": 24, "dev-clean": 3, "test-clean": 3}
    utt = read_manifest(result.manifests["dev-clean"])[0]
    assert utt.audio.endswith(".flac") and utt.text.isupper()
    assert utt.duration == pytest.approx(sf.info(utt.audio).frames / 16000, abs=1e-4)  # manifests keep 0.1 ms


def test_phone_training_and_per_end_to_end(timit_corpus, capsys):
    root, result = timit_corpus
    m = result.manifests
    overrides = [*TINY_OVERRIDES, f"data.train={m['train']}", f"data.dev={m['dev']}", f"train.out_dir={root / 'run'}"]
    # CPU LSTM time grows with time steps, not batch width: few, wide batches of 30 ms frames keep this fast
    overrides += ["data.batch_seconds=40", "features.stack_frames=3", "features.subsample=3", "train.epochs=1"]
    assert main(["train", "configs/timit_bilstm.yaml", *overrides, "data.phone_set=48"]) == 0
    capsys.readouterr()
    output = root / "test.recognitions.jsonl"
    assert main(["evaluate", str(root / "run" / "best.pt"), str(m["test"]), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    per = re.search(r"PER \(39 phones\) +([\d.]+)% \((\d+)/(\d+) phones", out)
    assert per, out
    num_reference = sum(len([p for p in u.phones.split() if p != "q"]) for u in read_manifest(m["test"]))
    assert int(per.group(3)) == num_reference  # every reference phone scored (q deleted)
    assert re.search(r"^sil +\d+", out, re.MULTILINE)  # the per-phone table
    assert "training-set phones" in out and "CER" not in out  # no character rates for a phone model

    # token-level fusion: a phone 4-gram over the folded training phones, beam search with it
    from asr.decode.arpa import read_arpa
    from asr.phones import PHONE_SETS

    lm = root / "phones.arpa"
    assert main(["lm", "build", str(m["train"]), "-o", str(lm), "--order", "4", "--unit", "phone", "--phone-set", "48"]) == 0
    unigrams = {w[0] for w in read_arpa(lm).ngrams[0]} - {"<s>", "</s>", "<unk>"}
    assert unigrams and unigrams <= set(PHONE_SETS[48])
    capsys.readouterr()
    assert main(["evaluate", str(root / "run" / "best.pt"), str(m["test"]), "--output", str(output),
                 "--decoder", "beam", "--beam-size", "4", "--lm", str(lm), "--lm-weight", "0.5"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    beam_per = re.search(r"PER \(39 phones\) +([\d.]+)% \((\d+)/(\d+) phones", out)
    assert beam_per and int(beam_per.group(3)) == num_reference, out
    assert "beam 4 + LM error" in out

    # --tune-lm on a phone model tunes against phone references (a word reference would not even tokenize)
    assert main(["evaluate", str(root / "run" / "best.pt"), str(m["dev"]), "--output", str(output), "--decoder", "beam",
                 "--beam-size", "4", "--lm", str(lm), "--tune-lm", "--lm-weights", "0,0.5", "--word-bonuses", "0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    tuned = re.search(r"best: --lm-weight [\d.]+ --word-bonus [\d.]+ \(WER [\d.]+% on .*, (\d+) utterances, 2 pairs tried\)", out)
    assert tuned and int(tuned.group(1)) == len(read_manifest(m["dev"])), out


def test_librispeech_recipe_end_to_end(librispeech_corpus, capsys):
    root, result = librispeech_corpus
    m = result.manifests
    overrides = [*TINY_OVERRIDES, f"data.train={m['train-clean-100']}", f"data.dev={m['dev-clean']}",
                 f"train.out_dir={root / 'run'}", "data.batch_seconds=40", "features.stack_frames=3",
                 "features.subsample=3", "train.epochs=1", "data.num_workers=0", "model.frontend_size=0"]  # fmt: skip
    assert main(["train", "configs/librispeech_100h_bilstm.yaml", *overrides]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(root / "run" / "best.pt"), str(m["test-clean"]), "--output", str(root / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"greedy WER +[\d.]+% \(\d+/\d+ words\)", out) and "PER" not in out


@pytest.mark.parametrize("name", ["timit_bilstm", "librispeech_100h_bilstm", "librispeech_960h_bilstm"])
def test_recipes_load(name):
    from asr.config import load_config
    from asr.text import build_tokenizer

    config = load_config(f"configs/{name}.yaml")
    assert build_tokenizer(config.data).kind == ("phone" if name.startswith("timit") else "char")
