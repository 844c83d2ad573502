"""Object stores: file:// (the embedded default) and s3:// (boto3), behind one interface."""

from cleftgan_hpc.storage.base import ObjectInfo, ObjectStore, check_key, join_key
from cleftgan_hpc.storage.open import open_store

__all__ = ["ObjectInfo", "ObjectStore", "check_key", "join_key", "open_store"]
