import json

import pytest

from asr.data.manifest import ManifestError, Utterance, read_manifest, write_manifest


def test_round_trip_with_relative_paths(tmp_path):
    (tmp_path / "wav").mkdir()
    utts = [
        Utterance("a", str(tmp_path / "wav" / "a.wav"), 1.5, "hello", speaker="s1", phones="hh ah l ow"),
        Utterance("b", str(tmp_path / "wav" / "b.wav"), 2.0, "bye", offset=0.5, extra={"phone_times": [0.0, 0.1]}),
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(path, utts)
    assert json.loads(path.read_text().splitlines()[0])["audio"] == "wav/a.wav"
    assert read_manifest(path) == utts


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "m.jsonl:2: not JSON"),
        ('{"id": "x", "audio": "a.wav", "text": "t"}', "m.jsonl:2: missing key\\(s\\) duration"),
        ('{"id": "a", "audio": "a.wav", "duration": 1, "text": "t"}', "m.jsonl:2: duplicate utterance id 'a'"),
        ('{"id": "x", "audio": "a.wav", "duration": 0, "text": "t"}', "m.jsonl:2: utterance 'x' has duration 0"),
        ('{"id": "x", "audio": "a.wav", "duration": "long", "text": "t"}', "m.jsonl:2: duration/offset must be numbers"),
        ("[1, 2]", "m.jsonl:2: expected a JSON object"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "audio": "a.wav", "duration": 1, "text": "t"}\n' + line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "none.jsonl")
