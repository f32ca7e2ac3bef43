"""Class names: ImageNet-1k WordNet ids with human names, built in."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ILSVRC-2012 classes in index order as (wnid, name)."""
    text = (resources.files("alexnet") / "data" / "imagenet_classes.txt").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return [(w, n) for w, n in rows]


@lru_cache(maxsize=1)
def wnid_to_name() -> dict[str, str]:
    return dict(imagenet_classes())


def display_name(class_id: str) -> str:
    """``n01440764`` -> ``tench (n01440764)``; any other folder name is returned as it is."""
    name = wnid_to_name().get(class_id)
    return f"{name} ({class_id})" if name else class_id


def is_imagenet(class_ids: list[str]) -> bool:
    """True when the classes are ImageNet-1k's, in the standard order."""
    return [w for w, _ in imagenet_classes()] == list(class_ids)
