"""KV-cache formats, by name."""

from reasonrl.engine.kv.base import KVFormat
from reasonrl.engine.kv.dense import DenseKV

FORMATS: dict[str, type[KVFormat]] = {"dense": DenseKV}


def get_format(name: str) -> type[KVFormat]:
    if name not in FORMATS:
        raise ValueError(f"unknown kv_format {name!r}; available: {', '.join(FORMATS)}")
    return FORMATS[name]
