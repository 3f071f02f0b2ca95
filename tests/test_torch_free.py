"""Decoding without torch (issue 23's runtime): greedy, the beam search with a word or token
n-gram LM, and the LMs themselves (from ARPA, and from their compiled file) run on numpy arrays
in a process where `import torch` fails, and give exactly what the torch path gives."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.decode import decode_greedy
from asr.decode.arpa import write_arpa
from asr.decode.beam import decode_beam
from asr.decode.fusion import TokenLMFusion, make_fusion
from asr.decode.kn import estimate_kneser_ney
from asr.decode.lm import NGramLM
from asr.text import CharTokenizer
from test_lm import save_torch_archive

pytest.importorskip("numba", reason="the beam search on numpy arrays is the numba layout")

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process: with "block", torch is made unimportable before anything else.
CHILD = r"""
import sys
if sys.argv[1] == "block":
    sys.modules["torch"] = None  # `import torch` raises ImportError from here on
import json
from pathlib import Path

import numpy as np

from asr.decode import decode_greedy
from asr.decode.arpa import ArpaError
from asr.decode.beam import LAYOUTS, decode_beam, search_options
from asr.decode.fusion import TokenLMFusion, make_fusion
from asr.decode.lm import NGramLM
from asr.text import CharTokenizer

data = Path(sys.argv[2])
lp, lengths = np.load(data / "lp.npy"), np.load(data / "lengths.npy")
tok = CharTokenizer(chars="abc ")
words = NGramLM.from_file(data / "words.arpa")
words.save(data / "words.bin")
loaded = NGramLM.from_file(data / "words.bin")
same = all(np.array_equal(getattr(words, name), getattr(loaded, name)) for name in ("_padded", "_first", "logp", "next_state", "_ends", "_bows", "_parent", "_last"))
fusions = {
    "word": make_fusion(str(data / "words.bin"), tok, unit="word"),
    "token": make_fusion(str(data / "chars.arpa"), tok, unit="token"),
}
fusions["token-no-table"] = TokenLMFusion(fusions["token"].lm, tok.symbols, table_limit=0)
out = {"same_tables": same, "greedy": decode_greedy(lp, lengths), "sentence": words.score_sentence(["ab", "c"])}
for name, options in json.loads(sys.argv[3]).items():
    fusion = fusions.get(options.pop("fusion"))
    out[name] = [[[h.ids, h.score, h.acoustic, h.lm, h.num_words] for h in u] for u in decode_beam(lp, lengths, fusion=fusion, **options)]
out["modules"] = sorted(m for m, module in sys.modules.items() if module is not None and (m.split(".")[0] == "torch" or m == "asr.decode.incremental"))
try:  # (last: an older asr's file is a torch archive, which imports torch where it can)
    NGramLM.from_file(data / "old.bin")
    out["old"] = "loaded"
except ArpaError as e:
    out["old"] = str(e)
print(json.dumps(out))
"""

SETTINGS = {  # name: decode_beam's options, the fusion by name
    "plain": dict(fusion=None, beam_size=6, token_top_k=3, nbest=3),
    "word": dict(fusion="word", beam_size=8, token_top_k=4, beam_threshold=8.0, lm_weight=0.8, word_bonus=0.5, nbest=4),
    "word-skip": dict(fusion="word", beam_size=5, token_cum_prob=0.9, blank_skip=0.6, lm_weight=1.2, nbest=2, merge="max"),
    "token": dict(fusion="token", beam_size=8, token_min_logp=-6.0, lm_weight=0.6, word_bonus=0.2, nbest=3),
    "token-no-table": dict(fusion="token-no-table", beam_size=8, token_min_logp=-6.0, lm_weight=0.6, word_bonus=0.2, nbest=3, layout="numba"),
}


def run_child(tmp_path, mode):
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(tmp_path), json.dumps(SETTINGS)],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_decoding_without_torch_gives_what_the_torch_path_gives(tmp_path):
    sentences = [s.split() for s in ["ab c", "a b", "cab ba", "bb a", "c c", "ab ab c"] * 3]
    write_arpa(tmp_path / "words.arpa", estimate_kneser_ney(sentences, 3))
    write_arpa(tmp_path / "chars.arpa", estimate_kneser_ney([list("|".join(s)) for s in sentences], 4))
    torch.manual_seed(3)
    logits = torch.randn(5, 40, 5) * torch.tensor([0.5, 3.0, 1.0, 2.0, 4.0])[:, None, None]
    logits[:, :, 0] += 3.0 * (torch.rand(5, 40) < 0.5)  # blank wins many frames, as a CTC model's
    lp, lengths = logits.log_softmax(-1), torch.tensor([40, 17, 33, 1, 0])
    np.save(tmp_path / "lp.npy", lp.numpy())
    np.save(tmp_path / "lengths.npy", lengths.numpy())
    save_torch_archive(NGramLM.from_file(tmp_path / "words.arpa"), tmp_path / "old.bin")  # an older asr's compiled LM

    free = run_child(tmp_path, "block")
    assert free["modules"] == []
    assert free["same_tables"]  # the compiled file maps back the tables built from the ARPA file
    assert "older asr" in free["old"] and "asr lm compile" in free["old"]  # which needs torch: say so, and what to do
    # the torch path on the same data: tensors in, the numba layout on the CPU by default
    tok = CharTokenizer(chars="abc ")
    fusions = {"word": make_fusion(str(tmp_path / "words.bin"), tok, unit="word"), "token": make_fusion(str(tmp_path / "chars.arpa"), tok, unit="token")}
    fusions["token-no-table"] = TokenLMFusion(fusions["token"].lm, tok.symbols, table_limit=0)
    assert free["greedy"] == decode_greedy(lp, lengths)
    assert free["sentence"] == fusions["word"].lm.score_sentence(["ab", "c"])
    for name, options in SETTINGS.items():
        options = dict(options, fusion=fusions.get(options["fusion"]))
        expected = [[[h.ids, h.score, h.acoustic, h.lm, h.num_words] for h in u] for u in decode_beam(lp, lengths, **options)]
        assert free[name] == expected, name
        flat = decode_beam(lp, lengths, **dict(options, layout="flat"))  # and the torch layout: the same search
        assert [[h.ids for h in u] for u in flat] == [[ids for ids, *_ in u] for u in free[name]], name
        assert [h.score for u in flat for h in u] == pytest.approx([s for u in free[name] for _, s, *_ in u], abs=1e-4), name

    # with torch installed, decoding numpy arrays still imports neither torch nor the streaming decoder
    unblocked = run_child(tmp_path, "import")
    assert unblocked["modules"] == []
    assert unblocked["old"] == "loaded"
    assert {k: v for k, v in unblocked.items() if k not in ("modules", "old")} == {k: v for k, v in free.items() if k not in ("modules", "old")}


def test_numpy_and_tensor_inputs_agree_in_process(tmp_path):
    # the same arrays as numpy and as tensors, every option that changes the frames or the candidates
    tok = CharTokenizer(chars="abc ")
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([s.split() for s in ["ab c", "a b", "cab ba", "bb a"] * 3], 3))
    fusion = make_fusion(str(tmp_path / "w.arpa"), tok, unit="word")
    torch.manual_seed(8)
    lp = (torch.randn(4, 30, tok.vocab_size) * 2.5).log_softmax(-1)
    lengths = torch.tensor([30, 12, 0, 25])
    assert decode_greedy(lp.numpy(), lengths.numpy()) == decode_greedy(lp, lengths)
    for options in (dict(token_top_k=2), dict(token_cum_prob=0.8, token_min_logp=-4.0), dict(blank_skip=0.7, beam_threshold=5.0)):
        options = dict(options, beam_size=6, fusion=fusion, lm_weight=0.9, nbest=3)
        assert decode_beam(lp.numpy(), lengths.numpy(), **options) == decode_beam(lp, lengths, **options), options
    # a torch layout asked for by name takes numpy arrays too (as tensors)
    assert decode_beam(lp.numpy(), lengths.numpy(), layout="flat", fusion=fusion) == decode_beam(lp, lengths, layout="flat", fusion=fusion)
