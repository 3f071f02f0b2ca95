import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.cli import main
from asr.config import load_config
from asr.train import BEST, train
from conftest import TINY_OVERRIDES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import write_noise_corpus

    root = tmp_path_factory.mktemp("cli")
    manifests = write_noise_corpus(root)
    config = load_config(
        "configs/demo.yaml",
        [*TINY_OVERRIDES, f"data.train={manifests['train']}", f"data.dev={manifests['dev']}", f"train.out_dir={root / 'run'}"],
    )
    return train(config, show_progress=False) / BEST, manifests


def test_transcribe_reports_bad_files_and_carries_on(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    rate = 44100  # any rate, any channel count, any format soundfile reads
    stereo = (0.1 * np.random.default_rng(0).standard_normal((rate, 2))).astype(np.float32)
    sf.write(tmp_path / "good.flac", stereo, rate)
    sf.write(tmp_path / "good.sph", stereo[:, 0], rate, format="NIST", subtype="PCM_16")
    (tmp_path / "empty.wav").write_bytes(b"")
    files = [tmp_path / "good.flac", tmp_path / "empty.wav", tmp_path / "missing.ogg", tmp_path / "good.sph"]
    code = main(["transcribe", str(ckpt), *map(str, files)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(files[0]), str(files[3])]
    assert "empty.wav: empty file" in err and "missing.ogg: no such file" in err
    assert "2 of 4 file(s) failed" in err


def test_transcribe_json(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32) + 0.01, 8000)
    assert main(["transcribe", "--json", str(ckpt), str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["file"].endswith("a.wav") and isinstance(records[0]["text"], str)
    assert records[1]["file"].endswith("b.wav") and "no such file" in records[1]["error"]


def test_evaluate_writes_per_utterance_results(checkpoint, tmp_path, capsys):
    ckpt, manifests = checkpoint
    out_file = tmp_path / "rec.jsonl"
    assert main(["evaluate", str(ckpt), str(manifests["dev"]), "--output", str(out_file)]) == 0
    table = capsys.readouterr().out
    assert "greedy WER" in table and "greedy CER" in table
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert {"id", "ref", "hyp", "sub", "del", "ins"} <= set(r)
        assert r["sub"] + r["del"] <= r["ref_words"]


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none.pt"), str(tmp_path / "m.jsonl")]) == 2
    assert "none.pt: no such checkpoint" in capsys.readouterr().err
    assert main(["train", "configs/demo.yaml", "model.hidden=3"]) == 2
    assert "hidden" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README's demo, as a user runs it: time and WER bars of the pipeline issue."""
    result = subprocess.run(
        [sys.executable, "-m", "asr", "demo", "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    wer = float(out.split("greedy WER")[1].split("%")[0])
    seconds = float(out.split("wall time:")[1].split("s")[0])
    print(out)
    assert wer <= 10.0, out
    beam_wer = float(out.split("beam 16 + LM WER")[1].split("%")[0])  # word 3-gram from the training text
    assert beam_wer < 0.5 * wer, out  # the LM must cut the error clearly, not by noise
    assert seconds <= 600, out
    assert (tmp_path / "demo" / "run" / "best.pt").is_file()
    assert (tmp_path / "demo" / "run" / "metrics.jsonl").is_file()
    assert "hypothesis" in out
    check_long_file(tmp_path / "demo", tmp_path)


def check_long_file(demo, tmp_path):
    """The demo model on its test utterances joined into a 3-minute file (pauses of 0.2-1.5 s,
    a third of the joins with none): `asr transcribe` gives nearly the WER of the utterances
    transcribed one by one, and subtitles that parse back inside the file."""
    import srt

    from asr.data.joined import join_utterances
    from asr.inference import Recognizer
    from asr.metrics import score_wer

    joined = join_utterances(demo / "corpus" / "test.jsonl", tmp_path / "talk.wav", 180.0, no_pause=0.3, seed=5)
    rows = {json.loads(line)["text"]: json.loads(line) for line in (demo / "corpus" / "test.jsonl").read_text().splitlines()}
    recognizer = Recognizer.from_checkpoint(demo / "run" / "best.pt")
    files = [str(demo / "corpus" / rows[t]["audio"]) for t in joined.texts]
    reference = recognizer.tokenizer.normalize(joined.text)
    per_utterance = score_wer([reference], [" ".join(r.text for r in recognizer.transcribe_files(files))]).rate
    run = subprocess.run([sys.executable, "-m", "asr", "transcribe", str(demo / "run" / "best.pt"), str(tmp_path / "talk.wav"), "--output-dir",
                          str(tmp_path / "subs"), "--output-format", "txt,srt", "--word-timestamps", "--max-line-width", "42"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = " ".join((tmp_path / "subs" / "talk.txt").read_text().split())
    long = score_wer([reference], [text]).rate
    print(f"3-minute file: per-utterance WER {per_utterance:.2%}, as one file {long:.2%}")
    assert long <= per_utterance + 0.02, (per_utterance, long)
    cues = list(srt.parse((tmp_path / "subs" / "talk.srt").read_text()))
    assert " ".join(c.content.replace("\n", " ") for c in cues) == text
    for a, b in zip(cues, cues[1:]):
        assert a.start <= a.end <= b.start
    assert cues[-1].end.total_seconds() <= joined.duration


def test_align_writes_ctm_jsonl_textgrids_and_plots_and_reports_bad_utterances(checkpoint, tmp_path, capsys):
    from praatio import textgrid

    ckpt, manifests = checkpoint
    rows = [json.loads(line) for line in manifests["dev"].read_text().splitlines()]
    for row in rows:
        row["audio"] = str(manifests["dev"].parent / row["audio"])
    rows += [
        dict(rows[0], id="empty", text=""),
        dict(rows[0], id="missing", audio=str(tmp_path / "missing.wav")),
        dict(rows[0], id="too_long", text="a much longer sentence than a second of audio can hold " * 3),
        dict(rows[0], id="unknown", text="caf\u00e9 \u4e2d"),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    code = main(["align", str(ckpt), str(manifest), "--output-dir", str(out), "--textgrid", "--plot", "2"])
    printed, err = capsys.readouterr()
    assert code == 1  # something failed, the rest was aligned
    assert "4 aligned, 4 failed" in printed
    for bad in ("empty: empty transcript", "missing.wav: no such file", "too_long: the transcript needs", "unknown: character"):
        assert bad in err
    durations = {r["id"]: r["duration"] for r in rows}
    words = [line.split() for line in (out / "words.ctm").read_text().splitlines()]
    assert {w[0] for w in words} == {r["id"] for r in rows[:4]}
    for utt, channel, start, duration, word, confidence in words:
        assert channel == "1" and len(start.split(".")[1]) == 2
        assert 0 <= float(start) and float(start) + float(duration) <= durations[utt] + 0.05
        assert 0 <= float(confidence) <= 1
    by_utt = {}
    for w in words:
        by_utt.setdefault(w[0], []).append(w[4])
    assert by_utt == {r["id"]: r["text"].split() for r in rows[:4]}  # every word, in order
    tokens = [line.split() for line in (out / "tokens.ctm").read_text().splitlines()]
    assert len(tokens[0][2].split(".")[1]) == 3
    assert [t[4] for t in tokens if t[0] == "dev0"] == list(rows[0]["text"].replace(" ", ""))
    records = [json.loads(line) for line in (out / "alignments.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["dev0", "dev1", "dev2", "dev3", "empty", "missing", "too_long", "unknown"]
    for r in records[:4]:
        starts = [t["start"] for t in r["tokens"]]
        assert starts == sorted(starts) and all(t["end"] > t["start"] for t in r["tokens"])
        assert " ".join(w["text"] for w in r["words"]) == rows[int(r["id"][3:])]["text"]
    assert all("error" in r for r in records[4:])
    grid = textgrid.openTextgrid(str(out / "textgrid" / "dev0.TextGrid"), includeEmptyIntervals=False)
    assert [e.label for e in grid.getTier("words").entries] == rows[0]["text"].split()
    assert [e.label for e in grid.getTier("tokens").entries] == list(rows[0]["text"].replace(" ", ""))
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["dev0.png", "dev1.png"]
    # one file and its transcript
    code = main(["align", str(ckpt), rows[1]["audio"], "--text", rows[1]["text"], "--output-dir", str(tmp_path / "one")])
    assert code == 0
    assert [line.split()[4] for line in (tmp_path / "one" / "words.ctm").read_text().splitlines()] == rows[1]["text"].split()
    assert main(["align", str(ckpt), rows[1]["audio"], "--output-dir", str(tmp_path / "x")]) == 2  # no --text


def test_transcribe_word_timestamps_are_the_transcript_aligned(checkpoint, capsys):
    ckpt, manifests = checkpoint
    rows = [json.loads(line) for line in manifests["dev"].read_text().splitlines()]
    audio = [str(manifests["dev"].parent / r["audio"]) for r in rows]
    assert main(["transcribe", "--word-timestamps", str(ckpt), *audio]) == 0
    for r, line in zip(rows, capsys.readouterr().out.splitlines()):
        record = json.loads(line)
        assert [w["text"] for w in record["words"]] == record["text"].split()
        ends = [0.0] + [w["end"] for w in record["words"]]
        for w, previous_end in zip(record["words"], ends):
            assert previous_end <= w["start"] < w["end"] <= r["duration"] + 0.05
    # the words' times are where the log-probs put them: a model's output built by hand
    from asr.inference import Recognizer

    recognizer = Recognizer.from_checkpoint(ckpt, device="cpu")
    symbols = recognizer.tokenizer.symbols
    frames = [0, symbols.index("n"), symbols.index("o"), 0, 0, symbols.index(" "), 0, symbols.index("n"), symbols.index("o"), 0]
    log_probs = torch.full((1, len(frames), len(symbols)), -8.0)
    log_probs[0, torch.arange(len(frames)), torch.tensor(frames)] = -0.01
    [words] = recognizer.word_times(log_probs, torch.tensor([len(frames)]), ["no no"], ["x"]).values()
    step = recognizer.features.frame_seconds
    starts, ends = recognizer.features.frame_times(len(frames))
    assert [(w.text, w.start, w.end) for w in words] == [("no", starts[1], ends[2]), ("no", starts[7], ends[8])]
    assert ends[2] - starts[1] == pytest.approx(2 * step)


def test_long_recording_log_probs_in_chunks_and_align_with_a_text_file(checkpoint, tmp_path, capsys):
    from asr.inference import Recognizer

    ckpt, manifests = checkpoint
    recognizer = Recognizer.from_checkpoint(ckpt, device="cpu")
    rows = [json.loads(line) for line in manifests["dev"].read_text().splitlines()]
    pieces = [sf.read(manifests["dev"].parent / r["audio"], dtype="float32")[0] for r in rows]
    audio = torch.from_numpy(np.concatenate(pieces))
    whole, _ = recognizer.log_probs(audio[None], torch.tensor([len(audio)]))
    short = recognizer.log_probs_long(audio, chunk_seconds=60.0)  # one chunk: the same as all at once
    assert torch.allclose(short, whole[0], atol=1e-5)
    chunked = recognizer.log_probs_long(audio, chunk_seconds=0.8, overlap_seconds=0.2, batch_size=3)
    assert chunked.shape == whole[0].shape and not chunked.isnan().any()  # every frame filled, once
    assert torch.allclose(chunked.exp().sum(-1), torch.ones(len(chunked)), atol=1e-4)
    # the CLI: one recording, its transcript a line per piece
    wav, text = tmp_path / "long.wav", tmp_path / "long.txt"
    sf.write(wav, audio.numpy(), 16000)
    text.write_text("".join(r["text"] + "\n" for r in rows) + "\n")
    assert main(["align", str(ckpt), str(wav), "--text-file", str(text), "--output-dir", str(tmp_path / "out"), "--window", "40"]) == 0
    segments = [line.split("\t") for line in (tmp_path / "out" / "segments.tsv").read_text().splitlines()]
    assert [s[4] for s in segments] == [r["text"] for r in rows]
    times = [(float(s[1]), float(s[2])) for s in segments]
    assert all(a < b for a, b in times) and all(times[i][1] <= times[i + 1][0] for i in range(len(times) - 1))
    assert [line.split()[4] for line in (tmp_path / "out" / "words.ctm").read_text().splitlines()] == " ".join(r["text"] for r in rows).split()
    assert "4 aligned" in capsys.readouterr().out
    assert (tmp_path / "out" / "untranscribed.tsv").is_file()
    text.write_text("hello\n\u4e2d\n")  # a line the tokenizer cannot read: an error naming it, exit 1
    assert main(["align", str(ckpt), str(wav), "--text-file", str(text), "--output-dir", str(tmp_path / "bad")]) == 1
    assert "segment 2" in capsys.readouterr().err


@pytest.fixture(scope="module")
def spoken_file(tmp_path_factory):
    """A minute of eSpeak sentences joined with pauses, some without one, and its truth."""
    from asr.data.joined import join_utterances
    from asr.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("spoken")
    manifests = synthesize_corpus(root / "corpus", num_utterances=40, seed=0, progress=False, num_workers=1)
    joined = join_utterances(manifests["train"], root / "talk.wav", 60.0, pause=(0.3, 1.2), no_pause=0.3, seed=0)
    return root / "talk.wav", joined


def test_transcribe_long_file_segments_are_decoded_as_they_would_be_alone(checkpoint, spoken_file, tmp_path):
    """Segments tile the file in order, files come back in order, and a segment's text is what
    the same audio gives transcribed on its own (batch size 1 in both, so the same shapes: this
    untrained model's near-ties flip with the padding of a batch)."""
    from asr.inference import Recognizer
    from asr.segment import SegmentOptions

    ckpt, _ = checkpoint
    wav, joined = spoken_file
    recognizer = Recognizer.from_checkpoint(ckpt)
    options = SegmentOptions(max_segment=8.0)  # long runs of speech become stitched windows
    short = tmp_path / "short.wav"
    sf.write(short, sf.read(wav, dtype="float32")[0][: 3 * 16000], 16000)
    results = list(recognizer.transcribe_files([wav, short, wav], batch_size=4, segmenting=options))
    assert [r.path for r in results] == [str(wav), str(short), str(wav)]
    assert all(r.error is None for r in results)
    assert [s.start for s in results[0].segments][:3] == [s.start for s in results[2].segments][:3]
    assert abs(results[0].duration - joined.duration) < 0.01 and abs(results[1].duration - 3.0) < 0.01
    [long] = recognizer.transcribe_files([wav], batch_size=1, segmenting=options)
    assert len(long.segments) >= 2
    for a, b in zip(long.segments, long.segments[1:]):
        assert 0 <= a.start < a.end <= b.start < b.end <= long.duration
    audio = sf.read(wav, dtype="float32")[0]
    checked = 0
    for s in long.segments:
        if s.end - s.start > 8.0:
            continue  # several windows: stitched, no file alone gives the same
        piece = tmp_path / "piece.wav"
        sf.write(piece, audio[round(s.start * 16000) : round(s.end * 16000)], 16000, subtype="FLOAT")  # the same samples
        [alone] = recognizer.transcribe_files([piece], batch_size=1, segmenting=SegmentOptions(max_segment=30.0))
        assert alone.text == s.text
        checked += 1
    assert checked >= 2


def test_transcribe_output_dir_writes_every_format_that_parses_back(checkpoint, spoken_file, tmp_path, capsys):
    import srt
    import webvtt

    ckpt, _ = checkpoint
    wav, _ = spoken_file
    out = tmp_path / "out"
    code = main(["transcribe", str(ckpt), str(wav), "--output-dir", str(out), "--output-format", "all", "--word-timestamps",
                 "--max-line-width", "20", "--max-segment", "10"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert str(wav) in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"talk.{ext}" for ext in ("txt", "json", "tsv", "srt", "vtt", "ctm"))
    record = json.loads((out / "talk.json").read_text())
    duration = record["duration"]
    cues = list(srt.parse((out / "talk.srt").read_text()))
    vtt = list(webvtt.read(str(out / "talk.vtt")))
    assert len(cues) == len(vtt)
    for cue in cues:
        assert 0 <= cue.start.total_seconds() <= cue.end.total_seconds() <= duration + 1e-3
        assert all(len(line) <= 20 or " " not in line for line in cue.content.splitlines())
    words = [w for s in record["segments"] for w in s["words"]]
    assert " ".join(w["text"] for w in words) == record["text"]
    assert len((out / "talk.ctm").read_text().splitlines()) == len(words)
    assert [c.content.replace("\n", " ") for c in cues] == [" ".join(c.text.split()) for c in vtt]


def test_transcribe_silence_noise_and_cut_off_long_files(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "silence.wav", np.zeros(40 * 16000, np.float32), 16000)
    sf.write(tmp_path / "noise.flac", (0.05 * rng.standard_normal(35 * 16000)).astype(np.float32), 16000)
    sf.write(tmp_path / "cut.wav", (0.05 * rng.standard_normal(40 * 16000)).astype(np.float32), 16000, subtype="PCM_16")
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    files = [str(tmp_path / n) for n in ("silence.wav", "noise.flac", "cut.wav")]
    assert main(["transcribe", "--json", "--max-segment", "10", str(ckpt), *files]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in records] == files
    assert records[0]["text"] == "" and records[0]["segments"] == []
    assert abs(records[0]["duration"] - 40) < 0.01 and abs(records[2]["duration"] - 20) < 0.1
    assert "cut.wav: cut off" in err and any("cut off" in w for w in records[2]["warnings"])


def test_transcribe_output_dir_refuses_two_files_with_one_stem(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    (tmp_path / "a").mkdir()
    for f in (tmp_path / "x.wav", tmp_path / "a" / "x.wav"):
        sf.write(f, np.zeros(16000, np.float32), 16000)
    assert main(["transcribe", str(ckpt), str(tmp_path / "x.wav"), str(tmp_path / "a" / "x.wav"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "would write the same files" in capsys.readouterr().err


def test_a_segment_that_cannot_be_decoded_is_reported_with_its_times_and_the_rest_carries_on(checkpoint, spoken_file, monkeypatch):
    from asr.inference import Recognizer
    from asr.segment import SegmentOptions

    ckpt, _ = checkpoint
    wav, _ = spoken_file
    recognizer = Recognizer.from_checkpoint(ckpt)
    options = SegmentOptions(max_segment=30.0)
    [whole] = recognizer.transcribe_files([wav], segmenting=options)
    bad = max(whole.segments, key=lambda s: s.end - s.start)
    bad_samples = round((bad.end - bad.start) * 16000)
    outputs = recognizer.outputs

    def failing(audio, lengths, frames=True):
        if any(abs(n - bad_samples) <= 1 for n in lengths.tolist()):
            raise RuntimeError("out of memory (simulated)")
        return outputs(audio, lengths, frames)

    monkeypatch.setattr(recognizer, "outputs", failing)
    [result] = recognizer.transcribe_files([wav], segmenting=options)
    assert result.error is None
    assert [w for w in result.warnings if "not decoded" in w] == [f"{wav}: {bad.start:.2f}-{bad.end:.2f} s not decoded: RuntimeError: out of memory (simulated)"]
    assert [(s.start, s.text) for s in result.segments] == [(s.start, s.text) for s in whole.segments if s is not bad]
