"""Analysis of trained FLARE models (pure torch, no Lightning): spectra and effective rank
of the token mixing, head diversity, latent attention maps, figures and training curves;
attention-logit statistics of FLARE and the SDPA baselines (logit growth)."""

from flare_lightning.analysis.capture import MixerKeys, capture_keys, latent_attention_maps
from flare_lightning.analysis.curves import curve, read_metrics
from flare_lightning.analysis.diversity import head_diversity, mixing_similarity, spectral_distance
from flare_lightning.analysis.logits import LogitStats, attention_logit_stats, logit_stats
from flare_lightning.analysis.report import MixerSpectra, analyse_mixers, merge_batches, summarise
from flare_lightning.analysis.spectra import effective_rank, mixing_eigenvalues, mixing_singular_values

__all__ = [
    "LogitStats",
    "MixerKeys",
    "MixerSpectra",
    "analyse_mixers",
    "attention_logit_stats",
    "capture_keys",
    "curve",
    "effective_rank",
    "head_diversity",
    "latent_attention_maps",
    "logit_stats",
    "merge_batches",
    "mixing_eigenvalues",
    "mixing_similarity",
    "mixing_singular_values",
    "read_metrics",
    "spectral_distance",
    "summarise",
]
