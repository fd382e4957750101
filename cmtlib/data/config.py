"""Where a run's images come from and how they are prepared."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    # synthetic: phantoms made by `cmt data synth`; manifest: an existing manifest at data_root;
    # any import kind (auto, ieee8023, covidx, nih, chexpert): import the collection(s) at data_root.
    data_kind: str = "synthetic"
    # Manifest path (data_kind=manifest) or collection folder (import kinds); '' for synthetic.
    data_root: str = ""
    # Phantom count, their stored size and seed: 1,200 images at 128 px train a narrow CMTNet on 2 cores.
    synth_n: int = 1200
    synth_size: int = 128
    synth_seed: int = 0
    # Training / evaluation resolution (the cache size); the paper uses 224.
    image_size: int = 224
    # Patient-disjoint split fractions and seed (`cmt data split`).
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    split_seed: int = 0
    # A ready cache folder (`cmt data cache`) to train from directly, skipping import/split/cache;
    # this is how a GPU machine without ../shared trains on real data.
    cache_dir: str = ""
