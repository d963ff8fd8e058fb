"""mtl-ray: one shared network, many binary tasks, trained from Parquet image shards on Ray."""

__version__ = "0.2.0"
