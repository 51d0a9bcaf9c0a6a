"""Configs, splits and roles of the SPQR prompt dataset, as plain Python data that imports nothing heavy."""

from __future__ import annotations

# Config name -> its splits, in the order the card lists them.
CONFIG_SPLITS: dict[str, tuple[str, ...]] = {
    "harmful": ("visu", "i2p", "ring_a_bell"),
    "benign": ("coco",),
    "bft": (
        "general_en",
        "multilingual_ar",
        "multilingual_es",
        "multilingual_fr",
        "multilingual_hi",
        "domain_art",
        "domain_medical",
    ),
    "ood": ("jailbreak", "paraphrase"),
}
DEFAULT_CONFIG = "harmful"

# The `role` every row of a config must have. Out-of-distribution prompts carry harmful intent.
CONFIG_ROLES: dict[str, str] = {"harmful": "harmful", "benign": "benign", "bft": "bft", "ood": "harmful"}
ROLES = ("harmful", "benign", "bft")

# Language each BFT split must be written in; other splits may mix languages.
SPLIT_LANGUAGES: dict[tuple[str, str], str] = {
    ("bft", "general_en"): "en",
    ("bft", "multilingual_ar"): "ar",
    ("bft", "multilingual_es"): "es",
    ("bft", "multilingual_fr"): "fr",
    ("bft", "multilingual_hi"): "hi",
    ("bft", "domain_art"): "en",
    ("bft", "domain_medical"): "en",
}
