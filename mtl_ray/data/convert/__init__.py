"""`mtl-ray data convert`: users' images and labels into shards (`pipeline.convert`)."""
