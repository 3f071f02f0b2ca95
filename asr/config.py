"""Typed configuration: one dataclass per section, filled from YAML and `key=value` overrides.

OmegaConf structured configs do the merging and type checking: an unknown key or a value of
the wrong type is a ConfigError naming it. The resolved config is saved in every checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class FeatureConfig:
    kind: str = "fbank"  # "fbank" (log-mel filterbank) or "mfcc"
    sample_rate: int = 16000  # Hz
    num_mel_bins: int = 80  # mel filters
    num_ceps: int = 13  # cepstra kept, for kind=mfcc
    frame_length_ms: float = 25.0  # analysis window, ms
    frame_shift_ms: float = 10.0  # hop, ms
    low_freq: float = 20.0  # Hz, lowest mel filter edge
    high_freq: float = 0.0  # Hz; 0 = Nyquist, negative = offset below Nyquist (as Kaldi)
    kaldi_compat: bool = False  # povey window, pre-emphasis, DC removal, snip-edges: matches Kaldi's fbank
    dither: float = 0.0  # Gaussian dither amplitude (in int16 units, as Kaldi); 0 = off
    cmvn: str = "utterance"  # per-"utterance" mean/variance normalization, "speech" (the same, digital silence left out of the statistics), "global" (the training set's statistics, saved in checkpoints), "running" (a sliding 6 s window with the global statistics as prior: streams), or "none"
    deltas: int = 0  # append delta features up to this order (0 = none, 2 = deltas + delta-deltas)
    stack_frames: int = 1  # concatenate this many consecutive frames ...
    subsample: int = 1  # ... and keep every n-th stacked frame (3 + 3 = 30 ms frames)


@dataclass
class ModelConfig:
    cell: str = "lstm"  # recurrent cell: lstm (nn.LSTM / cuDNN), gru, peephole, lstm_diag_peephole, lstm_variant, slstm, convlstm
    hidden_size: int = 320  # units per direction
    num_layers: int = 3  # stacked recurrent layers
    direction: str = "bidirectional"  # "bidirectional", "unidirectional" (streams frame by frame) or "latency_controlled" (LC-BLSTM: streams chunk by chunk; Zhang et al. 2016)
    chunk_frames: int = 0  # latency_controlled: model frames (after subsampling) per chunk; the forward direction carries its state across chunks
    right_context_frames: int = 0  # latency_controlled: frames past each chunk the backward direction reads (it restarts at every chunk)
    dropout: float = 0.1  # between recurrent layers and before the output layer
    frontend_size: int = 0  # width of a linear+ReLU layer before the LSTMs; 0 = none
    lstm_variant: str = "vanilla"  # cell=lstm_variant: Greff et al. 2017 variant (vanilla NIG NFG NOG NIAF NOAF CIFG NP FGR)
    peephole_output: str = "tanh"  # cell=peephole: sigma_h of Gers & Schmidhuber 2000, "tanh" or "identity"
    convlstm_layers: int = 1  # cell=convlstm: ConvLSTM layers below the num_layers nn.LSTM layers
    convlstm_channels: int = 8  # cell=convlstm: hidden channels per frequency bin
    convlstm_kernel: int = 5  # cell=convlstm: convolution width along frequency, bins (odd)
    convlstm_input_channels: int = 3  # cell=convlstm: the feature vector read as channels x frequency (3 stacked frames)
    frame_head: bool = False  # a second output layer that classifies each frame (the token it is inside; blank = silence), for forced alignment; trained from timed transcripts (train.frame_loss_weight)

    @property
    def bidirectional(self) -> bool:
        """Whether each layer has a backward direction (bidirectional and latency-controlled models)."""
        return self.direction != "unidirectional"


DIRECTIONS = ("bidirectional", "unidirectional", "latency_controlled")


@dataclass
class DataConfig:
    train: str = ""  # path to train manifest (JSON lines)
    dev: str = ""  # path to dev manifest; empty = no validation
    test: str = ""  # path to test manifest, used by `asr demo` / evaluate defaults
    unit: str = "char"  # label unit: "char", or "phone" (TIMIT phones from the manifest's `phones`)
    phone_set: int = 48  # unit=phone: train on the 61, 48 (Lee & Hon 1989) or 39 TIMIT phones; PER is scored on 39
    max_duration: float = 30.0  # s, longer utterances are skipped in training
    batch_seconds: float = 160.0  # s of audio per training batch (length-bucketed)
    batch_frames: int = 0  # padded feature frames (batch x longest, 10 ms frames before subsampling) per batch; 0 = batch_seconds / frame shift
    sortagrad: bool = False  # first epoch in order of length, shortest first (DeepSpeech2's SortaGrad)
    num_workers: int = 0  # DataLoader workers that load and resample audio
    on_unknown_char: str = "error"  # "error" or "drop" characters outside the vocabulary


@dataclass
class OptimConfig:
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 200  # linear warm-up, optimizer steps
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 5.0  # max global gradient norm


@dataclass
class TrainConfig:
    out_dir: str = "runs/demo"  # checkpoints and metrics log go here
    epochs: int = 10
    seed: int = 1234
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # mixed precision (bf16 autocast) on CUDA; ignored on CPU
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    log_every: int = 20  # steps between metrics-log lines
    eval_every_epochs: int = 1  # dev evaluation period, epochs
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    time_limit_s: float = 0.0  # stop training after this many seconds (0 = no limit); epochs set the schedule
    save_every_steps: int = 0  # also checkpoint (last.pt) every this many steps, mid-epoch (0 = epoch ends only)
    compile: bool = False  # torch.compile the model for training (needs a C++ compiler on CPU)
    tensorboard: bool = True  # also log to TensorBoard event files in out_dir/tensorboard (if tensorboard is installed)
    label_prior_weight: float = 0.0  # CTC over log p - w * log prior (Huang et al. 2024): less peaky, sharper alignments; 0 = plain CTC
    label_prior_momentum: float = 0.99  # the prior's running average, per step
    frame_loss_weight: float = 1.0  # model.frame_head: weight of its cross-entropy per frame, beside CTC per label; targets from the manifest's word or phone times (asr/frame_targets.py)


@dataclass
class AugmentConfig:
    """Training-only augmentation (asr/augment.py); the defaults switch everything off."""

    speed_factors: list[float] = field(default_factory=lambda: [1.0])  # speed perturbation factors, drawn uniformly; [0.9, 1.0, 1.1] as Ko et al. 2015
    pad_silence: float = 0.0  # s: up to this much silence added at each end of a training utterance (asr.augment.silence_pads)
    concat: float = 0.0  # share of training utterances joined in pairs, back to back, trimmed to their words (asr.augment.concat_pairs)
    freq_masks: int = 0  # SpecAugment frequency masks per utterance (Park et al. 2019 LibriSpeech: 2)
    freq_mask_width: int = 27  # F: widest frequency mask, mel bins (or cepstra)
    time_masks: int = 0  # SpecAugment time masks per utterance (LibriSpeech: 2)
    time_mask_width: int = 100  # T: widest time mask, 10 ms feature frames (before subsampling)
    time_mask_ratio: float = 1.0  # p: a time mask covers at most this fraction of its utterance
    time_warp: int = 0  # W: time warp reach, 10 ms feature frames (LibriSpeech: 80); 0 = off
    # waveform augmentation (asr/augment_wave.py), in the DataLoader workers, drawn per (seed, epoch, utterance)
    noise_prob: float = 0.0  # share of utterances with noise added
    noise_snr: list[float] = field(default_factory=lambda: [5.0, 20.0])  # dB, [low, high]: SNR drawn uniformly, over the speech's active region
    noise_colored: float = 1.0  # weight of synthetic 1/f^beta noise (beta uniform in [0, 2]: white to brown) among the noise kinds
    noise_babble: float = 0.0  # weight of babble: 3-7 other training utterances summed
    noise_files: float = 0.0  # weight of noise_dir's files
    noise_dir: str = ""  # folder of noise audio, searched recursively (e.g. MUSAN's noise/ music/ speech/)
    reverb_prob: float = 0.0  # share of utterances convolved with a simulated room's impulse response
    reverb_rt60: list[float] = field(default_factory=lambda: [0.1, 0.8])  # s, [low, high]: the rooms' reverberation times
    reverb_bank: int = 32  # impulse responses simulated once per run (pyroomacoustics), drawn from per utterance
    telephone_prob: float = 0.0  # share of utterances through a telephone channel: 300-3400 Hz, 8 kHz
    telephone_mulaw: bool = True  # ... with G.711 mu-law 8-bit coding
    lowpass_prob: float = 0.0  # share of utterances low-passed ...
    lowpass_hz: list[float] = field(default_factory=lambda: [3000.0, 7000.0])  # ... at a cutoff drawn in [low, high] Hz
    gain_db: list[float] = field(default_factory=lambda: [0.0, 0.0])  # dB, [low, high]: a gain drawn per utterance; [0, 0] = off
    pitch_prob: float = 0.0  # share of utterances whose pitch and formants are shifted (Praat's "Change gender", ~1 % of real time)
    pitch_shift: list[float] = field(default_factory=lambda: [0.0, 0.0])  # semitones, [low, high]
    formant_shift: list[float] = field(default_factory=lambda: [1.0, 1.0])  # formant frequency ratio, [low, high]
    vtlp: list[float] = field(default_factory=lambda: [1.0, 1.0])  # VTLP warp factor, [low, high] (Jaitly & Hinton 2013: [0.9, 1.1]); on the batched features; [1, 1] = off


@dataclass
class DecodeConfig:
    decoder: str = "greedy"  # "greedy" or "beam" (CTC prefix beam search, asr/decode/beam/)
    batch_size: int = 32  # utterances per batch through features and model
    beam_batch_size: int = 256  # utterances beam search decodes at once (model outputs are pooled up to it): its cost per frame is mostly fixed
    beam_size: int = 16  # prefixes kept per utterance, decoder=beam
    token_top_k: int = 8  # labels tried per frame (the frame's most probable), decoder=beam
    token_min_logp: float = -10.0  # ... and only those with at least this log probability
    token_cum_prob: float = 1.0  # ... and only the most probable labels (blank too) whose probabilities first add up to this; 1 = all
    beam_threshold: float = 15.0  # drop prefixes scoring more than this below the utterance's best
    blank_skip: float = 0.999  # skip frames whose blank probability exceeds this (after the first of a run); 1 = never
    beam_layout: str = "auto"  # "numba" (compiled loop, CPU), "flat" (torch ops), "dense" (CUDA graph), "triton" (one kernel, CUDA), "auto" (dense on CUDA, numba on CPU)
    lm: str = ""  # ARPA n-gram file for shallow fusion; empty = no LM
    lm_unit: str = "auto"  # "word" (char models: scored at spaces), "token" (one LM word per label), "auto" (word for char models)
    lm_weight: float = 0.5  # alpha: weight of ln P_lm
    word_bonus: float = 1.0  # beta: added per LM word (or token)
    oov_penalty: float = -10.0  # word-level fusion: ln units a word the LM does not list pays (on top of <unk>'s score)
    lm_lookahead: bool = True  # word-level fusion: an unfinished word carries the best unigram it can still become


@dataclass
class Config:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Configs written before `model.direction` said `model.bidirectional: true | false`: read it
    as direction bidirectional | unidirectional (old checkpoints and YAML files keep loading)."""
    model = data.get("model")
    if isinstance(model, dict) and "bidirectional" in model:
        model = dict(model)
        bidirectional = model.pop("bidirectional")
        model.setdefault("direction", "bidirectional" if bidirectional in (True, "true", "True") else "unidirectional")
        data = {**data, "model": model}
    return data


def _upgrade_override(item: str) -> str:
    key, _, value = item.partition("=")
    if key.strip() == "model.bidirectional":
        return "model.direction=" + ("bidirectional" if value.strip().lower() == "true" else "unidirectional")
    return item


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Schema defaults <- YAML file <- `section.key=value` overrides. Unknown keys are errors."""
    schema = OmegaConf.structured(Config)
    try:
        merged = schema
        if path is not None:
            loaded = OmegaConf.to_container(OmegaConf.load(str(path)))
            merged = OmegaConf.merge(merged, _upgrade(loaded) if isinstance(loaded, dict) else loaded)
        if overrides:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} is not of the form section.key=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([_upgrade_override(o) for o in overrides]))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"bad config{where}: {e}".splitlines()[0]) from e
    assert isinstance(config, Config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    return asdict(config)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from `config_to_dict` output (e.g. from a checkpoint)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), _upgrade(data)))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad config: {e}".splitlines()[0]) from e
