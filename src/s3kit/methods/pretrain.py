"""Pretraining small SSL encoders: MelHuBERT / HuBERT masked prediction, wav2vec 2.0 contrastive.

Dimension legend: ``B`` batch, ``S`` samples, ``T`` 20 ms frames, ``D`` width, ``C`` k-means
clusters, ``K`` negatives.

* Masking (HuBERT §3, wav2vec 2.0 §3.1): each frame starts a span of ``span`` frames with
  probability ``mask_prob`` (8 % and 10 frames: fairseq's ``mask_prob 0.8`` = 0.8 T / 10 spans).
* Targets (HuBERT §3.2): k-means ids of MFCC frames (iteration 1) or of a hidden layer of the
  previous model (later iterations), stored once per utterance (:func:`save_units`).
* Loss: cross-entropy over cluster ids on masked frames only (MelHuBERT; HuBERT's
  ``pred_nomask_weight 0``); HuBERT scores clusters by cosine with learned label embeddings / 0.1.
* wav2vec 2.0: ``transformers.Wav2Vec2ForPreTraining`` (Gumbel quantizer, contrastive loss over
  100 sampled negatives, diversity loss 0.1), temperature annealed 2 -> 0.5 by 0.999995 a step.

Architectures are the bias paper's Table 2 (:data:`ARCHS`), plus ``tiny`` for tests and the demo;
:func:`build_model` returns the untrained model with its pretraining head.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.models import melhubert
from s3kit.models.melhubert import FRAME_HOP, FRAME_RATE, MelHubertForPretraining, num_frames

KINDS = ("melhubert", "hubert", "wav2vec2")
IGNORE = -100  # target id of frames without a label (cross_entropy's ignore_index)
UPSTREAM_LOADER = "s3kit.methods.pretrain:upstream_from_checkpoint"

# Table 2 of the bias paper: (n_l, d_m, f_s, n_h). "tiny" is ours (SPEC.md "Data": the CPU teacher).
ARCHS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (4, 192, 768, 4),
    "small": (3, 640, 2048, 8),
    "slim": (12, 384, 768, 8),
    "base": (12, 768, 3072, 12),
}
# Parameter counts reported in Table 2 (millions), checked by the tests within 5 %.
TABLE2_PARAMS = {
    ("melhubert", "small"): 16.5, ("wav2vec2", "small"): 21.3, ("hubert", "small"): 20.9,
    ("melhubert", "slim"): 15.6, ("wav2vec2", "slim"): 20.4, ("hubert", "slim"): 20.0,
    ("melhubert", "base"): 90.2, ("wav2vec2", "base"): 95.0, ("hubert", "base"): 94.7,
}
# Cluster counts behind the released heads: MelHuBERT's final_proj has 512 outputs; HuBERT Base's
# fairseq dictionary has 500 k-means units + 4 special symbols.
PAPER_CLUSTERS = {"melhubert": 512, "hubert": 504}


# ============================================================================ masking + loss


def compute_span_mask(
    shape: tuple[int, int],
    mask_prob: float = 0.08,
    span: int = 10,
    min_masks: int = 2,
    lengths: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random span mask ``[B, T]`` bool (True = masked).

    Per item with ``n`` valid frames: ``round(mask_prob * n + u)`` span starts (``u ~ U[0, 1)``,
    fairseq's probabilistic rounding; at least ``min_masks``), drawn without replacement among
    the ``n - span + 1`` positions where a whole span fits; spans may overlap, so the expected
    masked fraction is about ``1 - (1 - mask_prob) ** span`` (57 % at the defaults), not
    ``mask_prob * span``. Frames past ``lengths`` are never masked.
    """
    B, T = shape
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    lengths = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths.detach().to("cpu", torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        n = int(min(lengths[b], T))
        if n <= 0:
            continue
        width = min(span, n)
        positions = n - width + 1
        u = float(torch.rand((), generator=generator))
        count = min(max(int(mask_prob * n + u), min_masks), positions)
        starts = torch.randperm(positions, generator=generator)[:count]
        idx = (starts[:, None] + torch.arange(width)[None, :]).reshape(-1)  # (count * width,)
        mask[b, idx] = True
    return mask


def masked_prediction_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over masked frames with a label.

    Args:
        logits: ``[B, T, C]`` cluster scores.
        targets: ``[B, T]`` long cluster ids (``IGNORE`` = no label).
        mask: ``[B, T]`` bool, True on masked frames; unmasked frames contribute nothing.
    """
    if logits.shape[:2] != targets.shape or targets.shape != mask.shape:
        raise ValueError(f"shapes differ: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, mask {tuple(mask.shape)}")
    chosen = mask & (targets != IGNORE)  # (B, T)
    if not bool(chosen.any()):
        return logits.sum() * 0.0  # keeps the graph (and DDP) intact on an empty selection
    return F.cross_entropy(logits[chosen].float(), targets[chosen])


def masked_accuracy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Fraction of masked, labelled frames whose argmax is the target (``[B, T, C]``, ``[B, T]``, ``[B, T]``)."""
    chosen = mask & (targets != IGNORE)
    if not bool(chosen.any()):
        return logits.new_zeros(())
    return (logits[chosen].argmax(-1) == targets[chosen]).float().mean()


# ============================================================================ models


class HubertForPretraining(nn.Module):
    """``transformers.HubertModel`` + HuBERT's masked-prediction head (fairseq ``HubertModel``):
    ``final_proj`` to ``final_dim`` and one embedding per cluster; logits are cosine similarities
    divided by ``logit_temp`` (HuBERT §3.2, eq. 1: 0.1)."""

    kind = "hubert"

    def __init__(self, config, num_clusters: int, final_dim: int = 256, logit_temp: float = 0.1):
        super().__init__()
        from transformers import HubertModel

        self.config = config
        self.hubert = HubertModel(config)
        self.final_proj = nn.Linear(config.hidden_size, final_dim)
        self.label_embeddings = nn.Parameter(torch.empty(num_clusters, final_dim).uniform_())
        self.logit_temp = logit_temp
        self.num_clusters = num_clusters

    def num_frames(self, lengths: Tensor) -> Tensor:
        return self.hubert._get_feat_extract_output_lengths(torch.as_tensor(lengths)).long()

    def forward(self, wavs: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``wavs [B, S]``, ``lengths [B]``, ``mask [B, T]`` -> logits ``[B, T, C]``."""
        attention = None
        if lengths is not None and bool((lengths < wavs.shape[1]).any()):
            attention = (torch.arange(wavs.shape[1], device=wavs.device)[None] < lengths[:, None]).long()
        out = self.hubert(wavs, attention_mask=attention, mask_time_indices=mask)
        proj = self.final_proj(out.last_hidden_state)  # (B, T, final_dim)
        return F.cosine_similarity(proj.unsqueeze(2), self.label_embeddings[None, None], dim=-1) / self.logit_temp

    def encoder(self):
        return self.hubert


def _hf_config(kind: str, arch: str, **overrides):
    from transformers import HubertConfig, Wav2Vec2Config

    n_l, d_m, f_s, n_h = ARCHS[arch]
    args: dict[str, Any] = dict(
        num_hidden_layers=n_l, hidden_size=d_m, intermediate_size=f_s, num_attention_heads=n_h,
        layerdrop=0.0,  # DDP needs every layer to run (DEPENDENCIES.md §4)
        mask_time_prob=0.05,  # > 0 so the model holds its mask embedding; masks are passed explicitly
        apply_spec_augment=True,
    )
    if arch == "tiny":  # a CPU-sized CNN and positional conv
        args.update(conv_dim=(128,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8)
    if kind == "wav2vec2":
        args.update(num_negatives=100, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1)
        if arch == "tiny":
            args.update(codevector_dim=64, proj_codevector_dim=64, num_codevectors_per_group=64)
    args.update(overrides)
    return (Wav2Vec2Config if kind == "wav2vec2" else HubertConfig)(**args)


def build_model(kind: str, arch: str = "tiny", num_clusters: int | None = None, **overrides) -> nn.Module:
    """The untrained model of ``kind`` (melhubert | hubert | wav2vec2) and ``arch``
    (tiny | small | slim | base) with its pretraining head.

    ``num_clusters`` defaults to the released heads' (MelHuBERT 512, HuBERT 504), which is what
    Table 2's parameter counts include; ``overrides`` change architecture fields
    (``MelHubertConfig`` fields for melhubert, transformers config fields otherwise; for hubert
    also ``final_dim`` and ``logit_temp``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    if kind == "melhubert":
        clusters = num_clusters or PAPER_CLUSTERS["melhubert"]
        return MelHubertForPretraining(melhubert.config_for(arch, num_clusters=clusters, **overrides))
    if kind == "hubert":
        head = {k: overrides.pop(k) for k in ("final_dim", "logit_temp") if k in overrides}
        head.setdefault("final_dim", 64 if arch == "tiny" else 256)
        return HubertForPretraining(_hf_config("hubert", arch, **overrides), num_clusters or PAPER_CLUSTERS["hubert"], **head)
    from transformers import Wav2Vec2ForPreTraining

    if num_clusters is not None:
        raise ValueError("wav2vec2 learns its own codebook; num_clusters does not apply")
    return Wav2Vec2ForPreTraining(_hf_config("wav2vec2", arch, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ============================================================================ k-means targets


@functools.lru_cache(maxsize=1)
def _mfcc():
    from s3kit.features import MFCC

    return MFCC(num_ceps=13, deltas=True, snip_edges=True)


def mfcc_features(wavs: Tensor, lengths: Tensor) -> Tensor:
    """HuBERT iteration-1 features at 20 ms: 13 MFCC + Δ + ΔΔ at 10 ms, frames ``[2i, 2i+1]``
    stacked -> ``[B, T, 78]`` with ``T = num_frames(lengths)`` (same frames as every model here)."""
    feats, flen = _mfcc().to(wavs.device)(wavs, lengths)  # (B, T10, 39)
    return melhubert.stack_frames(feats, flen)[:, : int(num_frames(lengths).max())]


class Featurizer:
    """What k-means clusters: ``"mfcc"`` or ``"CKPT:layer"`` (hidden layer of a previous model,
    any upstream ``s3kit.load_upstream`` reads). Call: ``(wavs [B, S], lengths [B]) -> [B, T, D]``."""

    def __init__(self, source: str = "mfcc", device: str | torch.device = "cpu"):
        self.source = source
        self.device = torch.device(device)
        self.upstream = None
        if source != "mfcc":
            path, sep, layer = source.rpartition(":")
            if not sep or not layer.isdigit():
                raise ValueError(f"kmeans source must be 'mfcc' or 'CHECKPOINT:LAYER' (e.g. runs/it1/checkpoints/step-00001000:6), got {source!r}")
            from s3kit.upstream import load_upstream

            self.upstream = load_upstream(path).to(self.device).eval()
            self.layer = int(layer)
            if not 0 <= self.layer < self.upstream.num_layers:
                raise ValueError(f"{path} has layers 0..{self.upstream.num_layers - 1}; got layer {self.layer}")
            if self.upstream.frame_rate != FRAME_RATE:
                raise ValueError(f"{path}: frame rate {self.upstream.frame_rate} Hz, targets need {FRAME_RATE} Hz")

    @torch.no_grad()
    def __call__(self, wavs: Tensor, lengths: Tensor) -> Tensor:
        wavs, lengths = wavs.to(self.device), lengths.to(self.device)
        if self.upstream is None:
            return mfcc_features(wavs, lengths)
        return self.upstream(wavs, lengths).states[self.layer]


@dataclass
class Units:
    """Cluster ids per utterance (20 ms frames) and where each utterance starts in its recording
    (so crops of it can be labelled). ``ids[cut_id]``: int64 ``[T]``."""

    ids: dict[str, np.ndarray]
    starts: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def targets(self, cuts, frames: int, offsets: list[int] | None = None) -> Tensor:
        """``[B, frames]`` long ids for a batch of cuts (``IGNORE`` where a cut has fewer frames);
        ``offsets`` are extra frame offsets inside each cut (a crop)."""
        out = torch.full((len(cuts), frames), IGNORE, dtype=torch.long)
        for b, cut in enumerate(cuts):
            if cut.id not in self.ids:
                raise KeyError(f"cut {cut.id!r} has no k-means units (targets were made for another manifest; rerun the k-means step)")
            shift = round((cut.start - self.starts[cut.id]) * FRAME_RATE) + (offsets[b] if offsets else 0)
            ids = self.ids[cut.id][max(shift, 0) : max(shift, 0) + frames]
            out[b, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        return out


def save_units(path: str | Path, units: Units) -> Path:
    """One safetensors file: ``ids`` (int16, all utterances concatenated) + JSON index
    ``[[cut_id, offset, length, start], ...]`` and meta in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index, chunks, offset = [], [], 0
    for cut_id, ids in units.ids.items():
        if ids.size and (ids.max() > np.iinfo(np.int16).max or ids.min() < 0):
            raise ValueError(f"cluster ids of {cut_id} do not fit int16")
        index.append([cut_id, offset, int(ids.size), float(units.starts.get(cut_id, 0.0))])
        chunks.append(ids.astype(np.int16))
        offset += ids.size
    flat = torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, np.int16))
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"ids": flat}, str(tmp), metadata={"index": json.dumps(index), "meta": json.dumps(units.meta)})
    tmp.replace(path)
    return path


def load_units(path: str | Path) -> Units:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: k-means units file not found")
    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
        flat = f.get_tensor("ids").numpy()
    if "index" not in header:
        raise ValueError(f"{path}: not an s3kit units file (no index in the header)")
    ids, starts = {}, {}
    for cut_id, offset, length, start in json.loads(header["index"]):
        ids[cut_id] = flat[offset : offset + length]
        starts[cut_id] = start
    return Units(ids, starts, json.loads(header.get("meta", "{}")))


def fit_kmeans(
    batches,
    featurize,
    num_clusters: int = 100,
    seed: int = 0,
    max_frames: int = 250_000,
    batch_size: int = 10_000,
    n_init: int = 20,
):
    """Mini-batch k-means (sklearn) on up to ``max_frames`` frames of ``featurize(wavs, lengths)``
    over ``batches`` (AudioBatch-like). Settings follow HuBERT's ``simple_kmeans``
    (k-means++, batch 10 000, 100 iterations, 20 inits, no reassignment); ids are stable for a seed."""
    from sklearn.cluster import MiniBatchKMeans
    from tqdm.auto import tqdm

    frames, total = [], 0
    for batch in tqdm(batches, desc="k-means features", leave=False):
        feats = featurize(batch.wavs, batch.lengths)  # (B, T, D)
        n = num_frames(batch.lengths)
        for b in range(feats.shape[0]):
            frames.append(feats[b, : int(n[b])].float().cpu().numpy())
            total += int(n[b])
        if total >= max_frames:
            break
    if not frames:
        raise ValueError("no audio to fit k-means on")
    x = np.concatenate(frames)
    if len(x) > max_frames:
        x = x[np.random.default_rng(seed).choice(len(x), max_frames, replace=False)]
    if len(x) < num_clusters:
        raise ValueError(f"{len(x)} frames are fewer than num_clusters={num_clusters}; use more audio or fewer clusters")
    km = MiniBatchKMeans(
        n_clusters=num_clusters, init="k-means++", max_iter=100, batch_size=batch_size, n_init=n_init,
        max_no_improvement=100, reassignment_ratio=0.0, random_state=seed, compute_labels=False,
    )
    return km.fit(x)


def assign_units(batches, featurize, km, meta: dict | None = None) -> Units:
    """Cluster id of every frame of every utterance in ``batches``."""
    from tqdm.auto import tqdm

    ids, starts = {}, {}
    for batch in tqdm(batches, desc="k-means labels", leave=False):
        feats = featurize(batch.wavs, batch.lengths)
        n = num_frames(batch.lengths)
        for b, cut in enumerate(batch.cuts):
            x = feats[b, : int(n[b])].float().cpu().numpy()
            ids[cut.id] = km.predict(x).astype(np.int16) if len(x) else np.zeros(0, np.int16)
            starts[cut.id] = float(cut.start)
    return Units(ids, starts, dict(meta or {}))


def make_targets(
    manifest,
    out: str | Path,
    source: str = "mfcc",
    num_clusters: int = 100,
    seed: int = 0,
    max_frames: int = 250_000,
    max_duration: float = 60.0,
    device: str = "cpu",
    also_label=(),
    on_bad_audio: str = "error",
    max_bad_share: float = 0.01,
) -> Units:
    """Fit k-means on ``source`` features of ``manifest`` and label every utterance of it and of
    the manifests in ``also_label`` (validation sets); writes ``out`` (units safetensors) and
    ``out`` with suffix ``.centroids.safetensors``. ``on_bad_audio`` / ``max_bad_share``: what
    to do with unusable cuts of ``manifest`` (:mod:`s3kit.data.badaudio`; ``also_label`` must
    be complete)."""
    from safetensors.torch import save_file

    from s3kit.data.loader import make_loader

    featurize = Featurizer(source, device)
    loader = lambda: make_loader(manifest, max_duration=max_duration, shuffle=False,  # noqa: E731
                                 on_bad_audio=on_bad_audio, max_bad_share=max_bad_share)
    km = fit_kmeans(loader(), featurize, num_clusters, seed, max_frames)
    meta = {"source": source, "num_clusters": num_clusters, "seed": seed, "frame_rate": FRAME_RATE,
            "inertia_per_frame": float(km.inertia_) if km.inertia_ is not None else None}
    units = assign_units(loader(), featurize, km, meta)
    for other in also_label:
        more = assign_units(make_loader(other, max_duration=max_duration, shuffle=False), featurize, km)
        units.ids.update(more.ids)
        units.starts.update(more.starts)
    out = Path(out)
    save_units(out, units)
    save_file({"centroids": torch.from_numpy(km.cluster_centers_.astype(np.float32))}, str(out.with_suffix(".centroids.safetensors")))
    return units


# ============================================================================ methods (trainer API)


@dataclass(frozen=True)
class PretrainConfig:
    """Procedure options; defaults are HuBERT's / wav2vec 2.0's (Base recipes)."""

    kind: Literal["melhubert", "hubert", "wav2vec2"] = "melhubert"
    arch: Literal["tiny", "small", "slim", "base"] = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # architecture overrides (see build_model)
    mask_prob: float = 0.08  # span-start probability (HuBERT / wav2vec 2.0 §3.1)
    mask_span: int = 10
    min_masks: int = 2
    max_frames: int = 781  # crop length: fairseq max_sample_size 250 000 samples / 320
    kmeans_from: str = "mfcc"  # "mfcc" (iteration 1) or "CHECKPOINT:LAYER" (later iterations)
    num_clusters: int = 100  # HuBERT iteration 1: 100 MFCC clusters (500 for hidden units)
    kmeans_max_frames: int = 250_000
    kmeans_seed: int = 0
    logit_temp: float = 0.1  # HuBERT eq. 1
    gumbel_temperature: tuple[float, float, float] = (2.0, 0.5, 0.999995)  # wav2vec 2.0 §4.2 (start, end, decay)
    max_duration: float = 60.0  # seconds of audio per batch
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.max_frames < self.mask_span:
            raise ValueError(f"max_frames={self.max_frames} must be >= mask_span={self.mask_span}")


def crop_batch(wavs: Tensor, lengths: Tensor, max_frames: int, generator: torch.Generator | None = None) -> tuple[Tensor, list[int]]:
    """Crop every item to the same number of 20 ms frames, ``min(shortest item, max_frames)``,
    at a random frame-aligned offset (fairseq's crop-to-shortest: no padding, so the group-norm
    CNN and attention see no pad). Returns ``wavs [B, S']`` and the frame offsets."""
    n = num_frames(lengths.cpu())  # (B,)
    frames = int(min(int(n.min()), max_frames))
    if frames < 1:
        raise ValueError(f"an utterance is shorter than one frame ({int(lengths.min())} samples)")
    samples = (frames - 1) * FRAME_HOP + melhubert.FBANK_WINDOW  # exactly `frames` frames
    offsets = [int(torch.randint(0, int(k) - frames + 1, (), generator=generator)) for k in n]
    out = torch.stack([wavs[b, o * FRAME_HOP : o * FRAME_HOP + samples] for b, o in enumerate(offsets)])
    return out, offsets


class MaskedPrediction(nn.Module):
    """MelHuBERT / HuBERT pretraining step: crop, span-mask, predict k-means ids of masked frames."""

    def __init__(self, model: nn.Module, units: Units, cfg: PretrainConfig):
        super().__init__()
        self.model = model
        self.units = units
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def _loss(self, batch, generator) -> dict[str, Tensor]:
        wavs, offsets = crop_batch(batch.wavs, batch.lengths, self.cfg.max_frames, generator)
        T = int(num_frames(torch.tensor([wavs.shape[1]]))[0])
        targets = self.units.targets(batch.cuts, T, offsets).to(wavs.device)
        mask = compute_span_mask((wavs.shape[0], T), self.cfg.mask_prob, self.cfg.mask_span, self.cfg.min_masks,
                                 generator=generator).to(wavs.device)
        logits = self.model(wavs, None, mask)  # (B, T, C)
        return {"loss": masked_prediction_loss(logits, targets, mask),
                "acc_masked": masked_accuracy(logits.detach(), targets, mask),
                "mask_frac": mask.float().mean()}

    def step(self, batch) -> dict[str, Tensor]:
        return self._loss(batch, self.generator)

    def validate(self, batch) -> dict[str, Tensor]:
        # fixed crops and masks per batch, so validation losses are comparable across steps
        return self._loss(batch, torch.Generator().manual_seed(self.cfg.seed + len(batch.cuts)))

    def checkpoint_meta(self) -> dict[str, Any]:
        return _model_meta(self.model, self.cfg)


class Wav2Vec2Pretraining(nn.Module):
    """wav2vec 2.0 step through ``Wav2Vec2ForPreTraining``: our span mask, its negative sampler;
    the summed loss is divided by the number of masked frames (fairseq normalises by sample size)."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.on_step_end(0)

    def _loss(self, batch, generator) -> dict[str, Tensor]:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices

        wavs, _ = crop_batch(batch.wavs, batch.lengths, self.cfg.max_frames, generator)
        B = wavs.shape[0]
        T = int(self.model._get_feat_extract_output_lengths(torch.tensor(wavs.shape[1])))
        mask = compute_span_mask((B, T), self.cfg.mask_prob, self.cfg.mask_span, self.cfg.min_masks, generator=generator)
        np_state = np.random.get_state()  # the HF sampler draws from numpy's global RNG: seed it from ours
        np.random.seed(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
        negatives = _sample_negative_indices((B, T), self.model.config.num_negatives, mask.numpy())
        np.random.set_state(np_state)
        mask = mask.to(wavs.device)
        out = self.model(wavs, mask_time_indices=mask, sampled_negative_indices=torch.from_numpy(negatives).to(wavs.device))
        n = mask.sum().clamp_min(1)
        return {"loss": out.loss / n, "contrastive": out.contrastive_loss.detach() / n,
                "diversity": out.diversity_loss.detach() / n, "perplexity": out.codevector_perplexity.detach()}

    def step(self, batch) -> dict[str, Tensor]:
        return self._loss(batch, self.generator)

    def validate(self, batch) -> dict[str, Tensor]:
        return self._loss(batch, torch.Generator().manual_seed(self.cfg.seed + len(batch.cuts)))

    def on_step_end(self, step: int) -> None:
        start, end, decay = self.cfg.gumbel_temperature
        self.model.set_gumbel_temperature(max(start * decay**step, end))

    def checkpoint_meta(self) -> dict[str, Any]:
        return _model_meta(self.model, self.cfg)


def _model_meta(model: nn.Module, cfg: PretrainConfig) -> dict[str, Any]:
    """What ``config.json`` of a pretraining checkpoint needs so ``s3kit.load_upstream`` reads it."""
    from s3kit.config import to_dict

    if cfg.kind == "melhubert":
        model_config = to_dict(model.config)
    else:
        model_config = model.config.to_dict()
    extra = {"num_clusters": model.num_clusters, "final_dim": model.final_proj.out_features} if cfg.kind == "hubert" else {}
    return {"upstream": UPSTREAM_LOADER, "model_kind": cfg.kind, "model_config": model_config, "model_extra": extra}


def upstream_from_checkpoint(directory: str | Path, **options):
    """An :class:`~s3kit.upstream.base.Upstream` from a pretraining checkpoint (any kind): the
    bare encoder, in eval mode. MelHuBERT -> ``MelHubertUpstream``; HuBERT / wav2vec 2.0 ->
    ``HFUpstream`` over ``HubertModel`` / ``Wav2Vec2Model``."""
    model, meta = load_pretrained(directory)
    name = options.pop("name", Path(directory).name)
    if meta["model_kind"] == "melhubert":
        if options:
            raise ValueError(f"{directory}: unknown options for a MelHuBERT upstream: {sorted(options)}")
        return melhubert.MelHubertUpstream(model.encoder, name=name).eval()
    from s3kit.upstream.hf import HFUpstream

    return HFUpstream(_bare_encoder(model).eval(), name=name, **options).eval()


def load_pretrained(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pretraining model (with head) saved by the trainer in ``directory`` and its meta."""
    from s3kit import checkpoint
    from s3kit.config import from_dict

    state, meta = checkpoint.load(directory)
    kind = meta.get("model_kind")
    if kind not in KINDS:
        raise checkpoint.CheckpointError(f"{directory}: not an s3kit pretraining checkpoint (model_kind={kind!r})")
    if kind == "melhubert":
        model = MelHubertForPretraining(from_dict(melhubert.MelHubertConfig, meta["model_config"], where=f"{directory}/config.json"))
    elif kind == "hubert":
        from transformers import HubertConfig

        extra = meta.get("model_extra", {})
        model = HubertForPretraining(HubertConfig.from_dict(meta["model_config"]), extra["num_clusters"], extra["final_dim"])
    else:
        from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

        model = Wav2Vec2ForPreTraining(Wav2Vec2Config.from_dict(meta["model_config"]))
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")} if any(k.startswith("model.") for k in state) else state
    checkpoint.check_compatible(model, state, source=str(directory))
    model.load_state_dict(state)
    return model, meta


def _bare_encoder(model: nn.Module):
    return model.hubert if isinstance(model, HubertForPretraining) else model.wav2vec2


def export_transformers(directory: str | Path, out: str | Path) -> Path:
    """Write the HuBERT / wav2vec 2.0 encoder of a pretraining checkpoint as a transformers
    directory (``save_pretrained`` of the bare ``HubertModel`` / ``Wav2Vec2Model``)."""
    from transformers.utils import logging as hf_logging

    model, meta = load_pretrained(directory)
    if meta["model_kind"] == "melhubert":
        raise ValueError(f"{directory}: MelHuBERT has no transformers class; load it with s3kit.load_upstream")
    hf_logging.disable_progress_bar()
    out = Path(out)
    _bare_encoder(model).save_pretrained(out)
    return out


# ============================================================================ the whole recipe


def fbank_stats(model: MelHubertForPretraining, batches, max_batches: int = 50) -> tuple[Tensor, Tensor]:
    """Dataset mean / std of the 40 fbank bins (MelHuBERT normalises with corpus statistics)."""
    total, sq, count = 0.0, 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if i >= max_batches:
                break
            feats, flen = model.encoder.front_end.raw(batch.wavs, batch.lengths)  # (B, T10, 40)
            valid = (torch.arange(feats.shape[1])[None] < flen[:, None]).unsqueeze(-1)
            total = total + (feats * valid).sum((0, 1)).double()
            sq = sq + (feats.pow(2) * valid).sum((0, 1)).double()
            count += int(flen.sum())
    if count == 0:
        raise ValueError("no audio to compute fbank statistics on")
    mean = total / count
    std = (sq / count - mean**2).clamp_min(0).sqrt()
    return mean.float(), std.float()


def build_method(cfg: PretrainConfig, units: Units | None = None) -> nn.Module:
    """The trainer method for ``cfg.kind`` around an untrained ``build_model`` model."""
    if cfg.kind == "wav2vec2":
        return Wav2Vec2Pretraining(build_model("wav2vec2", cfg.arch, **cfg.model), cfg)
    if units is None:
        raise ValueError(f"{cfg.kind} needs k-means units (see make_targets)")
    clusters = int(units.meta.get("num_clusters", cfg.num_clusters))
    overrides = dict(cfg.model)
    if cfg.kind == "hubert":
        overrides.setdefault("logit_temp", cfg.logit_temp)
    return MaskedPrediction(build_model(cfg.kind, cfg.arch, num_clusters=clusters, **overrides), units, cfg)


def default_train_config(kind: str, **changes):
    """TrainConfig defaults of the papers' recipes: HuBERT / wav2vec 2.0 Base (Adam lr 5e-4,
    betas (0.9, 0.98), eps 1e-6, weight decay 0.01, 8 % warm-up (32k of 400k), linear decay,
    400k updates); MelHuBERT (Adam lr 1e-4, grad-clip 10, REFERENCE-NOTES.md §D)."""
    from dataclasses import replace

    from s3kit.train import TrainConfig

    if kind == "melhubert":
        base = TrainConfig(lr=1e-4, total_steps=421_000, warmup=0.08, clip=10.0, betas=(0.9, 0.98), save_every=10_000)
    else:
        base = TrainConfig(lr=5e-4, total_steps=400_000, warmup=0.08, weight_decay=0.01, clip=10.0, optimizer="adamw",
                           betas=(0.9, 0.98), save_every=10_000)
    return replace(base, **changes)


def pretrain(manifest, cfg: PretrainConfig = PretrainConfig(), train_cfg=None, val_manifest=None):
    """Pretrain ``cfg.kind`` on ``manifest``: k-means targets (melhubert / hubert) into
    ``out_dir/targets``, then the common trainer (checkpoints at ``train_cfg.save_at`` are each an
    upstream: ``s3kit.load_upstream(out_dir/checkpoints/step-N)``). HuBERT / wav2vec 2.0 also get
    ``out_dir/transformers`` (the final encoder). Returns the trainer's ``TrainResult``."""
    from s3kit.data.loader import make_loader
    from s3kit.train import train

    train_cfg = train_cfg or default_train_config(cfg.kind)
    out = Path(train_cfg.out_dir)
    torch.manual_seed(cfg.seed)
    units = None
    if cfg.kind != "wav2vec2":
        path = out / "targets" / "units.safetensors"
        if path.exists():  # resume: reuse the targets the checkpoints were trained on
            units = load_units(path)
        else:
            units = make_targets(manifest, path, cfg.kmeans_from, cfg.num_clusters, cfg.kmeans_seed,
                                 cfg.kmeans_max_frames, cfg.max_duration, also_label=[val_manifest] if val_manifest else [],
                                 **train_cfg.bad_audio_options)
    method = build_method(cfg, units)
    paper = TABLE2_PARAMS.get((cfg.kind, cfg.arch))
    print(f"{cfg.kind} {cfg.arch}: {count_parameters(method.model) / 1e6:.2f} M parameters with its head"
          + (f" (Table 2: {paper} M)" if paper and not cfg.model else ""))
    if cfg.kind == "melhubert":
        stats_data = make_loader(manifest, max_duration=cfg.max_duration, shuffle=False, **train_cfg.bad_audio_options)
        mean, std = fbank_stats(method.model, stats_data)
        method.model.encoder.front_end.set_stats(mean, std)
    loader = make_loader(manifest, max_duration=cfg.max_duration, shuffle=True, seed=train_cfg.seed)
    val = make_loader(val_manifest, max_duration=cfg.max_duration, shuffle=False) if val_manifest else None
    result = train(method, loader, train_cfg, val_data=val, config=cfg)
    if cfg.kind != "melhubert" and result.checkpoint is not None:
        export_transformers(result.checkpoint, out / "transformers")
    return result


def pretrain_from_recipe(manifest, recipe=None, overrides=(), train_overrides=(), val_manifest=None):
    """:func:`pretrain` configured from a YAML recipe (``PretrainConfig`` fields plus a ``train:``
    section of ``TrainConfig`` fields) and ``key=value`` overrides (``train.x=...`` goes to the
    train config)."""
    from s3kit.config import apply_overrides, from_dict, read_yaml
    from s3kit.train import TrainConfig

    data = read_yaml(recipe) if recipe else {}
    train_data = data.pop("train", {}) or {}
    where = str(recipe) if recipe else "config"
    method_over = [o for o in overrides if not o.startswith("train.")]
    train_over = [o[len("train."):] for o in overrides if o.startswith("train.")] + list(train_overrides)
    cfg = apply_overrides(from_dict(PretrainConfig, data, where=where), method_over)
    base = from_dict(TrainConfig, {**to_plain(default_train_config(cfg.kind)), **train_data}, where=f"{where}: train")
    return pretrain(manifest, cfg, apply_overrides(base, train_over), val_manifest)


def to_plain(cfg) -> dict[str, Any]:
    from s3kit.config import to_dict

    return to_dict(cfg)
