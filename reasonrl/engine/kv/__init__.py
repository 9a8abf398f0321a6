"""KV-cache formats, by name."""

from reasonrl.engine.kv.base import KVFormat
from reasonrl.engine.kv.dense import DenseKV
from reasonrl.engine.kv.kivi import KiviKV
from reasonrl.engine.kv.spark import SparkKV
from reasonrl.engine.kv.tada import TadaKV

FORMATS: dict[str, type[KVFormat]] = {"dense": DenseKV, "tada": TadaKV, "kivi": KiviKV, "spark": SparkKV}


def get_format(name: str) -> type[KVFormat]:
    if name not in FORMATS:
        raise ValueError(f"unknown kv_format {name!r}; available: {', '.join(FORMATS)}")
    return FORMATS[name]
