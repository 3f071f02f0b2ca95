"""Manifests to batches: a Dataset that loads and tokenizes, a length-bucketed batch sampler
that fills batches up to a budget of padded audio seconds, and the collate function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from asr.audio import AudioError, load_audio
from asr.data.manifest import Utterance
from asr.text import CharTokenizer, TokenizerError


@dataclass
class Batch:
    ids: list[str]
    audio: torch.Tensor  # (batch, samples) float32, zero-padded
    audio_lengths: torch.Tensor  # (batch,) int64, samples
    targets: torch.Tensor  # (batch, max_labels) int64, zero-padded
    target_lengths: torch.Tensor  # (batch,) int64
    texts: list[str]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (utterance id, reason) dropped from this batch

    def __len__(self) -> int:
        return len(self.ids)


class UtteranceDataset(torch.utils.data.Dataset):
    """Loads audio (resampled, mono) and label ids for each utterance.

    Text is tokenized once up front: utterances the tokenizer rejects are listed in
    `self.rejected` as (id, reason) and left out. Audio that fails to load at run time comes
    back as an item with `error` set, for collate to drop and the trainer to count.
    """

    def __init__(self, utterances: Sequence[Utterance], tokenizer: CharTokenizer, sample_rate: int):
        self.sample_rate = sample_rate
        self.utterances: list[Utterance] = []
        self.labels: list[list[int]] = []
        self.rejected: list[tuple[str, str]] = []
        for utt in utterances:
            try:
                labels = tokenizer.encode(utt.text, utterance=utt.id)
            except TokenizerError as e:
                self.rejected.append((utt.id, str(e)))
                continue
            self.utterances.append(utt)
            self.labels.append(labels)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        item = {"id": utt.id, "text": utt.text, "labels": self.labels[index], "audio": None, "error": None}
        try:
            duration = utt.duration if utt.offset else None
            item["audio"] = torch.from_numpy(load_audio(utt.audio, self.sample_rate, utt.offset, duration))
        except AudioError as e:
            item["error"] = f"{utt.id}: {e}"
        return item


def collate(items: Sequence[dict]) -> Batch:
    good = [it for it in items if it["error"] is None]
    bad = [(it["id"], it["error"]) for it in items if it["error"] is not None]
    audio_lengths = torch.tensor([len(it["audio"]) for it in good], dtype=torch.int64)  # (batch,)
    target_lengths = torch.tensor([len(it["labels"]) for it in good], dtype=torch.int64)  # (batch,)
    audio = torch.zeros(len(good), int(audio_lengths.max()) if good else 0)  # (batch, samples)
    targets = torch.zeros(len(good), int(target_lengths.max()) if good else 0, dtype=torch.int64)  # (batch, max_labels)
    for i, it in enumerate(good):
        audio[i, : len(it["audio"])] = it["audio"]
        targets[i, : len(it["labels"])] = torch.tensor(it["labels"], dtype=torch.int64)
    return Batch([it["id"] for it in good], audio, audio_lengths, targets, target_lengths, [it["text"] for it in good], bad)


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar-length utterances whose padded size stays within `batch_seconds`.

    Each epoch the order is a pure function of (seed, epoch): lengths are jittered before
    sorting so bucket edges move, then the batches are shuffled. That makes resume exact:
    `set_epoch(e, start_batch=b)` replays epoch e from batch b.
    """

    def __init__(self, durations: Sequence[float], batch_seconds: float, seed: int = 0, shuffle: bool = True):
        if batch_seconds <= 0:
            raise ValueError("batch_seconds must be positive")
        self.durations = torch.tensor(durations, dtype=torch.float64)
        self.batch_seconds = batch_seconds
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0
        self._cache: tuple[int, list[list[int]]] | None = None  # (epoch, its batches)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, in order (computed once per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._make_batches())
        return self._cache[1]

    def _make_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        keys = self.durations
        if self.shuffle:  # jitter lengths by up to ±10 % so buckets differ between epochs
            keys = keys * (1 + 0.2 * (torch.rand(len(keys), generator=generator, dtype=torch.float64) - 0.5))
        order = torch.argsort(keys).tolist()
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for index in order:
            duration = float(self.durations[index])
            if current and max(longest, duration) * (len(current) + 1) > self.batch_seconds:
                batches.append(current)
                current, longest = [], 0.0
            current.append(index)
            longest = max(longest, duration)
        if current:
            batches.append(current)
        if self.shuffle:
            permutation = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in permutation]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(len(self.batches()) - self.start_batch, 0)


def make_loader(
    dataset: UtteranceDataset, sampler: Iterable[list[int]] | None, batch_size: int = 0, num_workers: int = 0
):
    """DataLoader over `dataset`: by a batch sampler (training; any sized iterable of index lists)
    or by fixed `batch_size` in order (evaluation)."""
    # A private generator: DataLoader draws a base seed for its workers from it each epoch, which
    # would otherwise advance the global RNG that dropout uses and break exact resume.
    generator = torch.Generator().manual_seed(0)
    if sampler is not None:
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers, generator=generator
        )
    return torch.utils.data.DataLoader(
        dataset, batch_size=max(batch_size, 1), shuffle=False, collate_fn=collate, num_workers=num_workers, generator=generator
    )
