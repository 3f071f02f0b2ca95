"""Manifests to batches: a Dataset that loads and tokenizes, a length-bucketed batch sampler
that fills batches up to a budget of padded frames (distributed-aware), and the collate function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from asr.audio import AudioError, load_audio
from asr.augment import concat_pairs, perturb_speed, silence_pads, speed_factor
from asr.augment_wave import WaveAugment, check_augment_config, vtlp_factor
from asr.config import AugmentConfig
from asr.data.manifest import Utterance
from asr.frame_targets import Intervals, TimingError, pad_intervals, scale_intervals, shift_intervals, token_intervals
from asr.text import CharTokenizer
from asr.tokens import SPACE, TokenizerError


@dataclass
class Batch:
    ids: list[str]
    audio: torch.Tensor  # (batch, samples) float32, zero-padded
    audio_lengths: torch.Tensor  # (batch,) int64, samples
    targets: torch.Tensor  # (batch, max_labels) int64, zero-padded
    target_lengths: torch.Tensor  # (batch,) int64
    texts: list[str]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (utterance id, reason) dropped from this batch
    # timed tokens for the frame head, as asr.frame_targets.pad_intervals gives them (starts, ends,
    # labels, timed); None where the dataset was not asked for times
    intervals: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    warp: torch.Tensor | None = None  # (batch,) float32 VTLP warp factors for the features (augment.vtlp); None: no warp

    def __len__(self) -> int:
        return len(self.ids)


class UtteranceDataset(torch.utils.data.Dataset):
    """Loads audio (resampled, mono) and label ids for each utterance.

    Text is tokenized once up front: utterances the tokenizer rejects are listed in
    `self.rejected` as (id, reason) and left out. Audio that fails to load at run time comes
    back as an item with `error` set, for collate to drop and the trainer to count. With
    `speed_factors` other than (1.0,), each item is speed-perturbed, and with `pad_silence` padded
    with silence (training only). With `augment`, its waveform augmentations (asr.augment_wave:
    noise, reverberation, channels, gain, voice) run on each item after those, and with
    augment.vtlp each item carries its VTLP warp factor, for the features (training only). With
    `timed`, each item also carries its tokens' times (`asr.frame_targets.token_intervals`, for
    the frame head); rows whose times do not fit their transcript are listed in
    `self.untimed` as (id, reason) and train without them.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: CharTokenizer,
        sample_rate: int,
        *,
        speed_factors: Sequence[float] = (1.0,),
        pad_silence: float = 0.0,
        concat: float = 0.0,
        seed: int = 0,
        timed: bool = False,
        augment: AugmentConfig | None = None,
    ):
        self.sample_rate = sample_rate
        self.pad_silence = pad_silence  # s, most silence added at each end (training only), see asr.augment
        self.concat = concat  # share of utterances joined in pairs, back to back (training only)
        self._pairs: tuple[int, dict[int, tuple[int, float, float]]] | None = None  # (epoch, its pairs)
        self.separator = tokenizer.symbols.index(SPACE) if tokenizer.kind == "char" else None  # put between two joined transcripts
        self.speed_factors = tuple(speed_factors)  # speed perturbation (training only), see asr.augment
        if any(f <= 0 for f in self.speed_factors) or not self.speed_factors:
            raise ValueError(f"speed factors must be positive, got {list(speed_factors)}")
        self.seed = seed
        self.epoch = 0
        self.utterances: list[Utterance] = []
        self.labels: list[list[int]] = []
        self.rejected: list[tuple[str, str]] = []
        self.timed = timed
        self.intervals: list[Intervals | None] = []
        self.untimed: list[tuple[str, str]] = []
        for utt in utterances:
            try:
                labels = tokenizer.encode(utt.text, utterance=utt.id)
            except TokenizerError as e:
                self.rejected.append((utt.id, str(e)))
                continue
            self.utterances.append(utt)
            self.labels.append(labels)
            if timed:
                try:
                    self.intervals.append(token_intervals(utt, tokenizer))
                except (TimingError, TokenizerError) as e:
                    self.untimed.append((utt.id, str(e)))
                    self.intervals.append(None)
        self.augment = augment  # waveform augmentation and VTLP draws (training only); None = none
        self.wave_augment = None
        if augment is not None:
            check_augment_config(augment)  # VTLP's options too, which WaveAugment does not use
            if WaveAugment.wanted(augment):
                self.wave_augment = WaveAugment(augment, sample_rate, seed, num_utterances=len(self.utterances), load_utterance=self.load_audio)
        self.vtlp = augment is not None and tuple(augment.vtlp) != (1.0, 1.0)

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        """Speed factors are drawn per (seed, epoch, utterance); call before making the epoch's loader."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        item = {"id": utt.id, "text": utt.text, "labels": self.labels[index], "audio": None, "error": None}
        try:
            factor = speed_factor(self.speed_factors, self.seed, self.epoch, index)
            samples, intervals = self._load(index, factor)
            partner = self.pairs(self.epoch).get(index)
            if partner is not None:
                other, gap_after, gap_before = partner
                more, more_intervals = self._load(other, factor)
                end = self._word_bound(index, factor, -1, gap_after) or len(samples)
                start = self._word_bound(other, factor, 0, gap_before) or 0
                samples = np.concatenate([samples[:end], more[start:]])
                if self.timed:
                    intervals = _join_intervals(intervals, shift_intervals(more_intervals, (end - start) / self.sample_rate))
                item["labels"] = self.labels[index] + ([self.separator] if self.separator is not None else []) + self.labels[other]
                item["text"] = f"{utt.text} {self.utterances[other].text}"
                item["id"] = f"{utt.id}+{self.utterances[other].id}"
            lead, trail = silence_pads(self.pad_silence, self.seed, self.epoch, index)
            if lead or trail:
                samples = np.pad(samples, (round(lead * self.sample_rate), round(trail * self.sample_rate)))
            if self.wave_augment is not None:
                samples = self.wave_augment(samples, self.epoch, index)
            if self.vtlp:
                item["warp"] = vtlp_factor(self.augment, self.seed, self.epoch, index)
            item["audio"] = torch.from_numpy(samples)
            if self.timed:
                item["intervals"] = shift_intervals(intervals, round(lead * self.sample_rate) / self.sample_rate)
        except AudioError as e:
            item["error"] = f"{utt.id}: {e}"
        return item

    def pairs(self, epoch: int) -> dict[int, tuple[int, float, float]]:
        """`asr.augment.concat_pairs` of `epoch` (computed once per epoch)."""
        if self._pairs is None or self._pairs[0] != epoch:
            self._pairs = (epoch, concat_pairs(self.concat, self.seed, epoch, len(self)))
        return self._pairs[1]

    def item_durations(self, epoch: int) -> list[float]:
        """Each item's duration (s) in `epoch` as augmentation makes it: speed, silence and the
        utterance joined after it (untrimmed: an upper bound); 0 for an utterance that is the
        second of a pair that epoch, which is no item of its own. What batches are planned by."""
        pairs = self.pairs(epoch)
        seconds = []
        for index, utt in enumerate(self.utterances):
            factor = speed_factor(self.speed_factors, self.seed, epoch, index)
            seconds.append(utt.duration / factor + sum(silence_pads(self.pad_silence, self.seed, epoch, index)))
        for first, (second, _, _) in pairs.items():
            seconds[first] += seconds[second]
            seconds[second] = 0.0
        return seconds

    def load_audio(self, index: int) -> np.ndarray:
        """Utterance `index`'s samples (samples,) as the manifest gives them, without augmentation;
        AudioError when they fail to load."""
        utt = self.utterances[index]
        duration = utt.duration if utt.offset else None
        return load_audio(utt.audio, self.sample_rate, utt.offset, duration)

    def _load(self, index: int, factor: float) -> tuple[np.ndarray, Intervals | None]:
        """Utterance `index`'s samples (samples,) played `factor` times as fast, and its timed tokens."""
        samples = perturb_speed(self.load_audio(index), factor, self.sample_rate)
        return samples, (scale_intervals(self.intervals[index], factor) if self.timed else None)

    def _word_bound(self, index: int, factor: float, which: int, keep: float) -> int | None:
        """The sample `keep` s before its first word (which=0) or after its last (-1), at speed
        `factor`; None where the manifest row has no word times."""
        extra = self.utterances[index].extra
        times = extra.get("word_starts" if which == 0 else "word_ends")
        if not times:
            return None
        at = times[which] / factor + (keep if which else -keep)
        return max(round(at * self.sample_rate), 0)


def _join_intervals(a: Intervals | None, b: Intervals | None) -> Intervals | None:
    """Two utterances' timed tokens, the second's already moved to where it starts; None (untimed)
    unless both are timed."""
    if a is None or b is None:
        return None
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


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
    intervals = pad_intervals([it["intervals"] for it in good]) if any("intervals" in it for it in good) else None
    warp = torch.tensor([it.get("warp", 1.0) for it in good], dtype=torch.float32) if any("warp" in it for it in good) else None  # (batch,)
    return Batch([it["id"] for it in good], audio, audio_lengths, targets, target_lengths, [it["text"] for it in good], bad, intervals, warp)


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar-length utterances whose padded size (batch x longest) stays within
    `max_frames`, in the unit of `lengths` (the trainer passes 10 ms feature frames).

    Each epoch the order is a pure function of (seed, epoch): lengths are jittered by up to
    +-10 % before sorting, so which utterances share a batch changes from epoch to epoch
    (shuffling within buckets), then the batches are shuffled (across buckets). With
    `sortagrad`, epoch 0 is instead sorted shortest first (Amodei et al. 2016, DeepSpeech2).

    Distributed: every rank computes the same batches for the epoch; if their number is not a
    multiple of `num_replicas`, the largest batches are split in two until it is, then rank r
    takes batches r, r + num_replicas, ... So every utterance is used exactly once per epoch
    across ranks, and every rank has the same number of batches (none waits forever in an
    all-reduce); only when every batch holds a single utterance are empty batches added.
    `set_epoch(e, start_batch=b)` replays this rank's share of epoch e from its batch b:
    mid-epoch resume is exact.
    """

    def __init__(
        self,
        lengths: Sequence[float],
        max_frames: float,
        seed: int = 0,
        shuffle: bool = True,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        sortagrad: bool = False,
        epoch_lengths: Callable[[int], Sequence[float]] | None = None,  # each item's length in an epoch (0: none that epoch), where augmentation changes it
    ):
        if max_frames <= 0:
            raise ValueError("max_frames (the batch budget) must be positive")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        if len(lengths) < num_replicas:
            raise ValueError(f"{len(lengths)} utterance(s) cannot feed {num_replicas} ranks: need at least one each")
        self.lengths = torch.tensor(lengths, dtype=torch.float64)
        self.max_frames = max_frames
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.sortagrad = sortagrad
        self.epoch_lengths = epoch_lengths
        self.epoch = 0
        self.start_batch = 0
        self._cache: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch, in order (computed once per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self.all_batches()[self.rank :: self.num_replicas])
        return self._cache[1]

    def all_batches(self) -> list[list[int]]:
        """Every rank's batches of the current epoch; batch i goes to rank i % num_replicas."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        sorted_epoch = self.sortagrad and self.epoch == 0
        lengths = self.lengths if self.epoch_lengths is None else torch.tensor(self.epoch_lengths(self.epoch), dtype=torch.float64)
        keys = lengths
        if self.shuffle and not sorted_epoch:
            keys = keys * (1 + 0.2 * (torch.rand(len(keys), generator=generator, dtype=torch.float64) - 0.5))
        order = [i for i in torch.argsort(keys, stable=True).tolist() if lengths[i] > 0]  # 0: no item this epoch (joined to another)
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for index in order:
            length = float(lengths[index])
            if current and max(longest, length) * (len(current) + 1) > self.max_frames:
                batches.append(current)
                current, longest = [], 0.0
            current.append(index)
            longest = max(longest, length)
        if current:
            batches.append(current)
        if self.shuffle and not sorted_epoch:
            permutation = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in permutation]
        return split_to_multiple(batches, self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(len(self.batches()) - self.start_batch, 0)


def split_to_multiple(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Split the largest batches in two, in place of the original, until the number of batches
    is a multiple of `multiple`. Halves never exceed the budget their parent kept. If every batch
    is a single utterance, empty batches are appended instead: a rank that draws one takes a step
    that adds nothing to the gradient (see `placeholder_batch`), and no utterance is dropped or
    repeated."""
    batches = list(batches)
    while len(batches) % multiple:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))  # first of the largest
        if len(batches[largest]) < 2:
            batches.extend([] for _ in range(-len(batches) % multiple))
            break
        batch = batches[largest]
        half = len(batch) // 2
        batches[largest : largest + 1] = [batch[:half], batch[half:]]
    return batches


def placeholder_batch(num_samples: int) -> Batch:
    """One silent utterance with no labels: CTC finds it infeasible, so it adds nothing to the
    loss or the gradient. A rank whose batch lost every utterance to bad audio trains on it, so
    that it still joins the group's gradient all-reduce; so does a rank that draws one of the
    empty batches `split_to_multiple` may add."""
    return Batch(
        ids=[],
        audio=torch.zeros(1, num_samples),  # (1, samples)
        audio_lengths=torch.tensor([num_samples]),  # (1,)
        targets=torch.zeros(1, 0, dtype=torch.int64),  # (1, 0)
        target_lengths=torch.zeros(1, dtype=torch.int64),  # (1,)
        texts=[""],
    )


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
