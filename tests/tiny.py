"""Tiny settings shared by the tests that run whole searches or trainings (seconds on a CPU)."""

from autodeeplab.space.autodeeplab.genotype import Genotype

SUPERNET = [
    "space.filter_multiplier=2",
    "space.num_layers=3",
    "space.num_blocks=2",
    "space.stem_channels=[4,4,8]",
]
"""A 3-layer, 2-block supernet with F=2 (``--set`` items of a SearchConfig)."""

SYNTHETIC_SEARCH_DATA = [
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "data.synthetic_train_samples=8",
    "data.synthetic_val_samples=2",
]
"""8 synthetic 32×32 training images (trainA/trainB of 4) and 2 for validation."""

SMALL_HEADS = ["model.filter_multiplier=4", "model.aspp_channels=8", "model.decoder_channels=8"]
"""A found network with F=4 and 8-channel ASPP/decoder (``--set`` items of a TrainConfig)."""

SMALL = Genotype(
    network_path=(0, 0, 1, 1),
    cell=((("sep_conv_3x3", 0), ("atr_conv_3x3", 1)), (("skip_connect", 2), ("avg_pool_3x3", 0))),
)
"""A 4-layer, 2-block genotype that visits two levels."""
