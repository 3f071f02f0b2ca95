"""Corpus readers on fixtures in the exact on-disk layouts, with real audio written by the test
(soundfile writes FLAC and NIST SPHERE), and the synthetic corpus written in those layouts."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import load_audio
from asr.cli import main
from asr.data.corpora import CorpusError, prepare_corpus
from asr.data.corpora.timit import CORE_TEST_SET, CORE_TEST_SPEAKERS, DEV_SET, DEV_SPEAKERS
from asr.data.manifest import read_manifest

RATE = 16000


def write_tone(path: Path, num_samples: int, seed: int, **kwargs) -> np.ndarray:
    """Write a short noise burst (what the readers see as audio) and return its int16-exact samples."""
    samples = (np.random.default_rng(seed).integers(-3000, 3000, num_samples) / 32768).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, RATE, subtype="PCM_16", **kwargs)
    return samples


def by_id(manifest: Path):
    return {u.id: u for u in read_manifest(manifest)}


# ---------------------------------------------------------------------------------------------
# LibriSpeech


@pytest.fixture
def librispeech(tmp_path):
    root = tmp_path / "LibriSpeech"
    chapter = root / "dev-clean" / "84" / "121123"
    write_tone(chapter / "84-121123-0000.flac", 16000, 0)
    write_tone(chapter / "84-121123-0001.flac", 24000, 1)
    write_tone(chapter / "84-121123-0003.flac", 8000, 3)  # audio with no transcript line
    (chapter / "84-121123-0000.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n"
        "84-121123-0001 BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED\n"
        "84-121123-0002 THIS LINE HAS NO AUDIO\n"  # missing audio file
        "99-121123-0004 A LINE OF AN UNKNOWN SPEAKER\n"
    )
    other = root / "test-other" / "1688" / "142285"
    write_tone(other / "1688-142285-0000.flac", 12000, 5)
    (other / "1688-142285.trans.txt").write_text("1688-142285-0000 THERE'S IRON THEY SAY IN ALL OUR BLOOD\n")
    return tmp_path


def test_librispeech_reads_every_split_and_reports_problems(librispeech, tmp_path):
    result = prepare_corpus("librispeech", librispeech, tmp_path / "out", progress=False)  # the parent of LibriSpeech/
    assert list(result.manifests) == ["dev-clean", "test-other"]  # official order
    dev = by_id(result.manifests["dev-clean"])
    assert sorted(dev) == ["84-121123-0000", "84-121123-0001"]
    assert dev["84-121123-0001"].duration == pytest.approx(1.5)  # 24000 samples from the FLAC header
    assert dev["84-121123-0000"].text == "GO DO YOU HEAR" and dev["84-121123-0000"].speaker == "84"
    assert by_id(result.manifests["test-other"])["1688-142285-0000"].text == "THERE'S IRON THEY SAY IN ALL OUR BLOOD"
    problems = "\n".join(result.problems)
    assert len(result.problems) == 3
    assert "84-121123-0000.trans.txt:3: no audio file 84-121123-0002.flac" in problems
    assert "84-121123-0000.trans.txt:4: utterance '99-121123-0004' is not speaker 84" in problems
    assert "84-121123-0003.flac: audio file with no line" in problems
    assert result.utterances == {"dev-clean": 2, "test-other": 1}


def test_librispeech_not_a_corpus(tmp_path):
    with pytest.raises(CorpusError, match="no LibriSpeech split"):
        prepare_corpus("librispeech", tmp_path, tmp_path / "out")
    with pytest.raises(CorpusError, match="no such directory"):
        prepare_corpus("librispeech", tmp_path / "nothing", tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# TIMIT

PHN = "0 2400 h#\n2400 3200 sh\n3200 4800 iy\n4800 5600 hv\n5600 7000 ae\n7000 7600 dcl\n7600 8000 d\n8000 9600 h#\n"
WRD = "2400 4800 she\n4800 8000 had\n"


def write_timit_utterance(folder: Path, stem: str, upper: bool, seed: int, phn: str = PHN) -> np.ndarray:
    case = str.upper if upper else str.lower
    samples = write_tone(folder / case(f"{stem}.wav"), 9600, seed, format="NIST")  # NIST SPHERE, as on the LDC disc
    (folder / case(f"{stem}.phn")).write_text(phn)
    (folder / case(f"{stem}.wrd")).write_text(WRD)
    (folder / case(f"{stem}.txt")).write_text("0 9600 She had.\n")
    return samples


def write_timit_tree(root: Path, upper: bool) -> dict[str, np.ndarray]:
    case = str.upper if upper else str.lower
    written = {}
    speakers = [("train", "dr1", "fcjf0"), ("test", "dr1", "mdab0"), ("test", "dr4", "faks0"), ("test", "dr2", "mzzz0")]
    for k, (part, region, speaker) in enumerate(speakers):
        folder = root / case(part) / case(region) / case(speaker)
        for j, stem in enumerate(("sa1", "si1039", "sx49")):
            written[f"{speaker}_{stem}"] = write_timit_utterance(folder, stem, upper, seed=10 * k + j)
    return written


@pytest.mark.parametrize("upper", [True, False], ids=["UPPER", "lower"])
def test_timit_standard_split_in_either_case(tmp_path, upper):
    written = write_timit_tree(tmp_path / "timit", upper)
    result = prepare_corpus("timit", tmp_path / "timit", tmp_path / "out")
    splits = {split: by_id(path) for split, path in result.manifests.items()}
    assert sorted(splits["train"]) == ["fcjf0_si1039", "fcjf0_sx49"]  # SA left out
    assert sorted(splits["test"]) == ["mdab0_si1039", "mdab0_sx49"]  # core test speaker
    assert sorted(splits["dev"]) == ["faks0_si1039", "faks0_sx49"]  # dev speaker; mzzz0 is in neither list
    utt = splits["test"]["mdab0_sx49"]
    assert utt.phones == "h# sh iy hv ae dcl d h#"
    assert utt.text == "she had" and utt.speaker == "mdab0" and utt.extra["dialect_region"] == "dr1"
    assert utt.duration == pytest.approx(0.6)
    assert sf.info(utt.audio).format == "NIST"
    np.testing.assert_array_equal(load_audio(utt.audio), written["mdab0_sx49"])
    assert any("dev speaker(s) have no utterances" in p and "fdac1" in p for p in result.problems)


def test_timit_includes_sa_on_request_and_skips_bad_files(tmp_path):
    root = tmp_path / "TIMIT"
    write_timit_tree(root, upper=True)
    speaker = root / "TRAIN" / "DR1" / "FCJF0"
    (speaker / "SX49.PHN").unlink()  # audio without phones
    (speaker / "SI1039.PHN").write_text("0 100 h#\n100 200 xyz\n")  # a symbol outside the 61
    (speaker / "SX139.PHN").write_text(PHN)  # phones without audio
    result = prepare_corpus("timit", tmp_path, tmp_path / "out", include_sa=True)  # the parent of TIMIT/
    assert sorted(by_id(result.manifests["train"])) == ["fcjf0_sa1"]
    assert "mdab0_sa1" in by_id(result.manifests["test"])
    problems = "\n".join(result.problems)
    assert "SX49.WAV: no .PHN phone transcription" in problems
    assert "SI1039.PHN: phone(s) xyz are not TIMIT phones" in problems
    assert "FCJF0/sx139: no .WAV audio" in problems


def test_timit_not_a_tree(tmp_path):
    (tmp_path / "TRAIN").mkdir()
    with pytest.raises(CorpusError, match="not a TIMIT tree"):
        prepare_corpus("timit", tmp_path, tmp_path / "out")


def test_timit_speaker_lists():
    assert len(CORE_TEST_SET) == 24 and len(DEV_SPEAKERS) == len(DEV_SET) == 50
    assert not CORE_TEST_SET & DEV_SET
    for region, speakers in CORE_TEST_SPEAKERS.items():
        assert sorted(s[0] for s in speakers) == ["f", "m", "m"], region  # 2 male + 1 female per region
    for speaker in CORE_TEST_SET | DEV_SET:
        assert len(speaker) == 5 and speaker[0] in "mf" and speaker[4].isdigit()


# ---------------------------------------------------------------------------------------------
# Kaldi and NeMo


def test_kaldi_segments_utt2spk_and_problems(tmp_path):
    long = write_tone(tmp_path / "audio" / "rec1.wav", 48000, 0)  # 3 s
    write_tone(tmp_path / "audio" / "rec2.flac", 16000, 1)
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "wav.scp").write_text(f"rec1 {tmp_path}/audio/rec1.wav\nrec2 {tmp_path}/audio/rec2.flac\nrec3 {tmp_path}/audio/gone.wav\n")
    (data / "segments").write_text("u1 rec1 0.5 1.25\nu2 rec1 2.0 -1\nu3 rec2 0.0 5.0\nu4 rec3 0 1\nu5 rec9 0 1\n")
    (data / "text").write_text("u1 hello there\nu2 general kenobi\nu3 too long\nu4 gone\nu5 no such recording\nu6 no segment\n")
    (data / "utt2spk").write_text("u1 spk1\nu2 spk2\nu3 spk1\nu4 spk1\nu5 spk1\nu6 spk1\n")
    result = prepare_corpus("kaldi", data, tmp_path / "out")
    utts = by_id(result.manifests["train"])
    assert sorted(utts) == ["u1", "u2"]
    assert (utts["u1"].offset, utts["u1"].duration, utts["u1"].speaker) == (0.5, 0.75, "spk1")
    assert utts["u2"].duration == pytest.approx(1.0)  # end -1: to the end of the 3 s file
    segment = load_audio(utts["u1"].audio, RATE, utts["u1"].offset, utts["u1"].duration)
    np.testing.assert_array_equal(segment, long[8000:20000])
    problems = "\n".join(result.problems)
    assert "'u3' spans 0.0..5.0 s" in problems
    assert "gone.wav: no such file" in problems or "gone.wav: cannot read header" in problems
    assert "'u5' names recording 'rec9'" in problems
    assert "'u6' has no segment" in problems


def test_kaldi_without_segments_and_piped_commands(tmp_path):
    write_tone(tmp_path / "a.wav", 8000, 0)
    data = tmp_path / "d"
    data.mkdir()
    (data / "wav.scp").write_text(f"a {tmp_path}/a.wav\nb {tmp_path}/a.wav\n")
    (data / "text").write_text("a one two\n")
    result = prepare_corpus("kaldi", data, tmp_path / "out")
    assert [(u.id, u.duration, u.text) for u in read_manifest(result.manifests["d"])] == [("a", 0.5, "one two")]
    assert any("recording 'b' has no line in text" in p for p in result.problems)
    (data / "wav.scp").write_text("a sph2pipe -f wav /x/a.sph |\n")
    with pytest.raises(CorpusError, match=r"wav.scp:1: recording 'a' is a piped command"):
        prepare_corpus("kaldi", data, tmp_path / "out")


def test_nemo_manifest(tmp_path):
    write_tone(tmp_path / "wavs" / "x.wav", 16000, 0)
    lines = [
        {"audio_filepath": "wavs/x.wav", "duration": 1.0, "text": "first"},
        {"audio_filepath": "wavs/x.wav", "duration": 0.4, "offset": 0.5, "text": "second segment"},
        {"audio_filepath": "wavs/missing.wav", "duration": 1.0, "text": "gone"},
        {"audio_filepath": "wavs/x.wav", "text": "no duration"},
    ]
    (tmp_path / "train_manifest.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = prepare_corpus("nemo", tmp_path / "train_manifest.json", tmp_path / "out")
    utts = read_manifest(result.manifests["train_manifest"])
    assert [(u.id, u.offset, u.text) for u in utts] == [("x", 0.0, "first"), ("x-1", 0.5, "second segment")]
    assert utts[0].audio == str((tmp_path / "wavs" / "x.wav").resolve())
    assert any("train_manifest.json:3: no audio file" in p for p in result.problems)
    assert any("train_manifest.json:4: not a NeMo manifest line" in p for p in result.problems)


def test_cli_prepare_prints_a_table_and_warnings(librispeech, tmp_path, capsys):
    assert main(["prepare", "librispeech", str(librispeech / "LibriSpeech"), str(tmp_path / "m")]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"dev-clean +2 utterances", out) and re.search(r"problems +3", out)
    assert err.count("warning:") == 3
    assert main(["prepare", "timit", str(tmp_path / "nowhere"), str(tmp_path / "m")]) == 2
    assert "no such directory" in capsys.readouterr().err
