"""Random two-word names for task runs that were created without one."""

from __future__ import annotations

import random

ADJECTIVES = (
    "amber", "ancient", "bold", "brave", "bright", "brisk", "calm", "careful", "cheerful",
    "clever", "cobalt", "cosmic", "crimson", "curious", "daring", "dazzling", "eager",
    "earnest", "electric", "elegant", "emerald", "fearless", "fierce", "friendly", "gentle",
    "gleaming", "golden", "graceful", "happy", "hidden", "honest", "humble", "icy", "jolly",
    "keen", "kind", "lively", "lucky", "magnetic", "mellow", "merry", "mighty", "misty",
    "modest", "nimble", "noble", "patient", "placid", "polite", "proud", "quick", "quiet",
    "radiant", "rapid", "rustic", "scarlet", "serene", "shiny", "silent", "silver", "smart",
    "snowy", "solid", "steady", "stellar", "sturdy", "sunny", "swift", "tidy", "tranquil",
    "valiant", "vivid", "warm", "wise", "witty", "zealous",
)  # fmt: skip

ANIMALS = (
    "albatross", "alpaca", "antelope", "badger", "beaver", "bison", "bobcat", "buffalo",
    "camel", "caribou", "cheetah", "chipmunk", "cobra", "condor", "coyote", "crane", "dingo",
    "dolphin", "donkey", "eagle", "falcon", "ferret", "finch", "flamingo", "fox", "gazelle",
    "gecko", "gibbon", "giraffe", "gopher", "grouse", "hare", "hedgehog", "heron", "ibex",
    "iguana", "jackal", "jaguar", "kestrel", "koala", "lemur", "leopard", "llama", "lynx",
    "marmot", "meerkat", "mink", "mongoose", "moose", "narwhal", "newt", "ocelot", "okapi",
    "orca", "osprey", "otter", "panda", "panther", "pelican", "penguin", "puffin", "quail",
    "rabbit", "raven", "reindeer", "salamander", "seal", "sparrow", "stork", "swan", "tapir",
    "tiger", "toucan", "turtle", "walrus", "weasel", "wolf", "wombat", "yak", "zebra",
)  # fmt: skip


def random_name() -> str:
    """A name such as "swift-otter"."""
    return f"{random.choice(ADJECTIVES)}-{random.choice(ANIMALS)}"
