"""The built-in eSpeak NG corpus: real synthesis, real files, no mocks."""

import json
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data import synth
from asr.data.manifest import read_manifest
from asr.data.sentences import VOCABULARY, Deck, generate_sentences, spell_number
from asr.data.synth import (
    HELDOUT_VOICES,
    TRAIN_VOICES,
    SynthError,
    VoiceError,
    speech_end,
    synthesize,
    synthesize_corpus,
)

TEXT_PATTERN = re.compile(r"[a-z']+( [a-z']+)*")  # exactly what the char model must output
NUM_SMALL = 40  # utterances in the small test corpus


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def corpus_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("synth")
    return root, synthesize_corpus(root, NUM_SMALL, seed=0, progress=False)


# --- sentences ---------------------------------------------------------------------------------


def test_vocabulary_is_large_and_clean():
    assert len(VOCABULARY) >= 500
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert all(re.fullmatch(r"[a-z']+", word) for word in VOCABULARY)


def test_spell_number():
    assert spell_number(7) == "seven"
    assert spell_number(40) == "forty"
    assert spell_number(42) == "forty two"
    assert spell_number(300) == "three hundred"
    assert spell_number(2019) == "two thousand nineteen"
    with pytest.raises(ValueError):
        spell_number(0)


def test_sentences_are_deterministic_distinct_and_clean():
    first = generate_sentences(300, np.random.default_rng(5))
    assert first == generate_sentences(300, np.random.default_rng(5))
    assert first != generate_sentences(300, np.random.default_rng(6))
    assert len(set(first)) == len(first)
    for sentence in first:
        assert TEXT_PATTERN.fullmatch(sentence), sentence
        assert 8 <= len(sentence.split()) <= 14, sentence
        assert set(sentence.split()) <= set(VOCABULARY), sentence


def test_full_size_plan_uses_every_word_in_train_and_keeps_heldout_sentences_unseen(tmp_path):
    jobs = synth._plan_corpus(tmp_path, 3000, seed=0)  # the plan only; nothing is spoken
    by_split = {split: [job for job in jobs if job.id.startswith(split + "-")] for split in synth.SPLITS}
    assert [len(by_split[s]) for s in synth.SPLITS] == [2700, 150, 150]
    train_words = {word for job in by_split["train"] for word in job.text.split()}
    assert train_words == set(VOCABULARY)
    train_texts = {job.text for job in by_split["train"]}
    for split in ("dev", "test"):
        assert not train_texts & {job.text for job in by_split[split]}
        assert {job.voice for job in by_split[split]} == set(HELDOUT_VOICES)
    assert {job.voice for job in by_split["train"]} == set(TRAIN_VOICES)
    rates = [job.rate_wpm for job in jobs]
    pitches = [job.pitch for job in jobs]
    assert min(rates) == synth.RATE_WPM[0] and max(rates) == synth.RATE_WPM[1]
    assert min(pitches) == synth.PITCH[0] and max(pitches) == synth.PITCH[1]


# --- one utterance -----------------------------------------------------------------------------


def test_voices_exist_and_heldout_voices_are_unseen():
    assert len(TRAIN_VOICES) >= 8 and len(HELDOUT_VOICES) >= 3
    assert not set(TRAIN_VOICES) & set(HELDOUT_VOICES)
    spoken = {}
    for voice in TRAIN_VOICES + HELDOUT_VOICES:
        audio = synthesize("a quick test", voice).audio
        assert rms(audio) > 0.01, voice
        spoken[voice] = audio
    # every voice sounds different from every other: no variant was silently ignored
    signatures = {voice: (audio.size, round(rms(audio), 5)) for voice, audio in spoken.items()}
    assert len(set(signatures.values())) == len(signatures)


@pytest.mark.parametrize("voice,culprit", [("xx-nowhere", "'xx-nowhere'"), ("en-us+nobody", "'nobody'")])
def test_unknown_voice_is_a_clear_error(voice, culprit):
    with pytest.raises(VoiceError, match=culprit):
        synthesize("hello there", voice)


def test_synthesized_speech_is_loud_and_its_length_follows_the_text():
    short, short_phones, _ = synthesize("the red cup", "en-us+m3", 170, 50)
    text = "the red cup and the old lamp are behind the garage near the river"
    long, long_phones, _ = synthesize(text, "en-us+m3", 170, 50)
    assert short.dtype == np.float32 and short.ndim == 1
    assert rms(short) > 0.02 and rms(long) > 0.02  # speech, not silence (full scale is 1.0)
    assert 0.4 < short.size / synth.SAMPLE_RATE < 1.5  # s
    assert 3.0 < long.size / short.size < 7.0  # 5x the words
    assert len(long_phones) > 3 * len(short_phones)
    slow = synthesize("the red cup", "en-us+m3", 100, 50).audio
    assert slow.size > 1.4 * short.size  # rate is in words per minute


def test_phones_are_the_ones_spoken_with_times_inside_the_audio():
    audio, phones, _ = synthesize("the car is in the garage", "en-us+m3")
    symbols = [phone.symbol for phone in phones]
    assert symbols[:2] == ["D", "@2"] and "Z" in symbols  # "the" ... garage's final /zh/
    assert not any(s.startswith("_") or s[0] in "'," for s in symbols)  # no pauses or stress marks
    starts = [phone.start for phone in phones]
    assert starts == sorted(starts)
    assert 0 <= starts[0] < 0.05 and starts[-1] < audio.size / synth.SAMPLE_RATE
    # the accent shows in the phones: British "en" says garage differently from "en-us"
    british = synthesize("the car is in the garage", "en+m3").phones
    assert [phone.symbol for phone in british] != symbols


def words_phones(phones: list[synth.Phone], num_words: int) -> list[list[str]]:
    return [[phone.symbol for phone in phones if phone.word == w] for w in range(num_words)]


def test_words_espeak_speaks_as_one_are_cut_between_their_own_phones():
    # eSpeak's dictionary speaks "there were" and "in the" as single entries, one event each
    text = "there were forty two red cups in the kitchen"
    audio, phones, words = synthesize(text, "en-us+m3")
    assert [word.text for word in words] == text.split() and all(word.certain for word in words)
    assert words_phones(phones, len(words)) == [
        ["D", "e@"], ["w", "3:"], ["f", "O@", "t#", "i"], ["t", "u:"], ["r", "E", "d"],
        ["k", "V", "p", "s"], ["I", "n"], ["D", "@2"], ["k", "I", "tS", "@", "n"],
    ]  # fmt: skip
    for w, word in enumerate(words):
        mine = [phone for phone in phones if phone.word == w]
        assert (word.start, word.end) == (mine[0].start, mine[-1].end)
    # no pause in this sentence: every phone ends where the next starts, the last where the sound stops
    assert all(a.end == b.start for a, b in zip(phones, phones[1:]))
    assert words[-1].end == pytest.approx(speech_end(audio) / synth.SAMPLE_RATE, abs=0.005)


def test_a_pause_falls_between_the_words_it_separates():
    audio, phones, words = synthesize("she didn't fix it because it was too old", "en-us+m3")
    gaps = [(a, b) for a, b in zip(words, words[1:]) if a.end < b.start]
    assert [(a.text, b.text) for a, b in gaps] == [("it", "because")]  # eSpeak pauses before "because"
    (it, because), rate = gaps[0], synth.SAMPLE_RATE
    assert because.start - it.end > 0.05  # s
    assert rms(audio[round(it.end * rate) : round(because.start * rate)]) < 0.005  # silence
    assert rms(audio[round(it.start * rate) : round(it.end * rate)]) > 0.02  # speech up to the pause
    assert rms(audio[round(because.start * rate) : round(because.end * rate)]) > 0.02
    gaps = [(a, b) for a, b in zip(phones, phones[1:]) if a.end < b.start]
    assert [(a.symbol, b.symbol) for a, b in gaps] == [("t", "b")]


def test_split_fused_by_hand():
    assert synth._split_fused(["f", "3", "D", "@2"], [["f", "O@"], ["D", "@2"]]) == ([2, 2], True)
    assert synth._split_fused(["D", "e@", "w", "3:", "r-"], [["D", "e@"], ["w", "3:"]]) == ([2, 3], True)
    assert synth._split_fused(["p", "q", "r"], [["x"], ["x"]]) == ([1, 2], False)  # two cuts cost the same
    with pytest.raises(SynthError, match="2 words as 1 phones"):
        synth._split_fused(["a"], [["a"], ["b"]])


def speak_after(pronounce_first: bool) -> bytes:
    """In a fresh process: speak one sentence, maybe look up pronunciations, speak another."""
    synthesize("the old lamp is behind the garage", "en-us+m1")
    if pronounce_first:
        synth._engine().pronounce("there")
        synth._engine().pronounce("kitchen")
    return synthesize("there were four cups in the kitchen", "en-us+m1").audio.tobytes()


def test_looking_up_pronunciations_leaves_the_audio_alone():
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        plain, looked_up = pool.map(speak_after, [False, True], chunksize=1)
    assert plain == looked_up


def test_out_of_range_controls_are_rejected():
    with pytest.raises(ValueError, match="rate_wpm"):
        synthesize("hello", "en-us", rate_wpm=450)
    with pytest.raises(ValueError, match="pitch"):
        synthesize("hello", "en-us", pitch=101)
    with pytest.raises(ValueError, match="empty"):
        synthesize("  ", "en-us")


# --- the corpus --------------------------------------------------------------------------------


def check_times(utt, audio: np.ndarray) -> None:
    """The phone and word times of one manifest row are complete and consistent."""
    starts, ends, owners = utt.extra["phone_times"], utt.extra["phone_ends"], utt.extra["phone_words"]
    words, word_starts, word_ends = utt.extra["words"], utt.extra["word_starts"], utt.extra["word_ends"]
    assert words == utt.text.split() and "uncertain_words" not in utt.extra
    assert len(starts) == len(ends) == len(owners) == len(utt.phones.split())
    assert len(word_starts) == len(word_ends) == len(words)
    assert 0 <= starts[0] and ends[-1] <= utt.duration and 0 <= word_starts[0] and word_ends[-1] <= utt.duration
    for k, (start, end) in enumerate(zip(starts, ends)):
        # eSpeak folds some post-vocalic l into the vowel before, leaving its event no length
        assert start < end or (start == end and utt.phones.split()[k] == "l")
    assert all(end <= start for end, start in zip(ends, starts[1:]))  # in order, never overlapping
    assert all(start < end for start, end in zip(word_starts, word_ends))
    assert all(end <= start for end, start in zip(word_ends, word_starts[1:]))
    assert owners == sorted(owners) and set(owners) == set(range(len(words)))  # each word >= 1 phone
    for w in range(len(words)):
        mine = [k for k, owner in enumerate(owners) if owner == w]
        assert (word_starts[w], word_ends[w]) == (starts[mine[0]], ends[mine[-1]])
    # between words only silence: a gap is one of eSpeak's pauses
    for end, start in zip(word_ends, word_starts[1:]):
        if end < start:
            assert start - end > 0.03  # s
            assert rms(audio[round(end * 16000) : round(start * 16000)]) < 0.01


def test_small_corpus_layout_and_audio(small_corpus):
    root, manifests = small_corpus
    assert set(manifests) == {"train", "dev", "test"}
    splits = {split: read_manifest(path) for split, path in manifests.items()}
    sizes = {split: len(utts) for split, utts in splits.items()}
    assert sum(sizes.values()) == NUM_SMALL and sizes["dev"] >= 3 and sizes["test"] >= 3
    for split, utts in splits.items():
        for utt in utts:
            path = Path(utt.audio)
            assert path == root / "wav" / split / f"{utt.id}.wav"
            info = sf.info(str(path))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
            assert utt.duration == pytest.approx(info.frames / info.samplerate, abs=1e-3)
            assert 2.0 < utt.duration < 6.0
            audio, _ = sf.read(str(path), dtype="float32")
            assert rms(audio) > 0.02
            voiced = np.flatnonzero(np.abs(audio) > 1e-3)
            assert voiced[0] / 16000 <= 0.2 and (audio.size - voiced[-1]) / 16000 <= 0.2  # s of edge silence
            assert TEXT_PATTERN.fullmatch(utt.text)
            phones = utt.phones.split()
            times = utt.extra["phone_times"]
            assert len(phones) >= len(utt.text.split()) and len(times) == len(phones)
            assert times == sorted(times) and 0 < times[0] and times[-1] < utt.duration
            assert voiced[0] / 16000 <= times[0] + 0.01  # speech starts where the first phone does
            check_times(utt, audio)
    # audio paths are stored relative to the manifest, so the folder can move
    first = json.loads(manifests["train"].read_text().splitlines()[0])
    assert first["audio"].startswith("wav/train/")


def test_small_corpus_words_get_their_own_phones(small_corpus):
    # If phones went to the wrong words, a word's phones would not be its pronunciation: on the
    # 3000-utterance corpus 95 % match it exactly and none is more than 2 edits away, while
    # moving every word boundary by one phone leaves no word matching.
    _, manifests = small_corpus
    engine = synth._engine()
    distances = []
    for utt in (u for path in manifests.values() for u in read_manifest(path)):
        engine.set_voice(utt.speaker.partition("+")[0])
        phones, owners = utt.phones.split(), utt.extra["phone_words"]
        for w, word in enumerate(utt.extra["words"]):
            mine = [phone for phone, owner in zip(phones, owners) if owner == w]
            distances.append(synth._phone_distance(mine, engine.pronounce(word)))
    assert max(distances) <= 2 and distances.count(0) >= 0.9 * len(distances)


def test_small_corpus_keeps_voices_and_sentences_held_out(small_corpus):
    _, manifests = small_corpus
    splits = {split: read_manifest(path) for split, path in manifests.items()}
    assert {u.speaker for u in splits["train"]} <= set(TRAIN_VOICES)
    train_texts = {u.text for u in splits["train"]}
    for split in ("dev", "test"):
        assert {u.speaker for u in splits[split]} <= set(HELDOUT_VOICES)
        assert not train_texts & {u.text for u in splits[split]}
    assert not {u.text for u in splits["dev"]} & {u.text for u in splits["test"]}


def test_same_seed_same_bytes_whatever_the_workers_or_history(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "SHARD_SIZE", 16)  # several shards from 40 utterances
    synthesize_corpus(tmp_path / "a", NUM_SMALL, seed=3, progress=False, num_workers=1)
    synthesize("speak something first, in this process", "en-us+f2")  # must not leak into the corpus
    synthesize_corpus(tmp_path / "b", NUM_SMALL, seed=3, progress=False, num_workers=3)
    a, b = corpus_files(tmp_path / "a"), corpus_files(tmp_path / "b")
    assert len(a) == NUM_SMALL + 3
    assert a == b


def test_different_seed_different_corpus(small_corpus, tmp_path):
    root, manifests = small_corpus
    other = synthesize_corpus(tmp_path, NUM_SMALL, seed=1, progress=False)
    assert other["train"].read_bytes() != manifests["train"].read_bytes()
    wav = Path("wav/train/train-00000.wav")
    assert (tmp_path / wav).read_bytes() != (root / wav).read_bytes()


def test_too_few_utterances_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        synthesize_corpus(tmp_path, 6, progress=False)


def test_deck_deals_every_item_once_per_pass():
    items = [str(i) for i in range(10)]
    deck = Deck(items, np.random.default_rng(0))
    first_pass = [deck.deal() for _ in items]
    second_pass = [deck.deal() for _ in items]
    assert sorted(first_pass) == sorted(second_pass) == items
    assert first_pass != items  # shuffled, not in order
