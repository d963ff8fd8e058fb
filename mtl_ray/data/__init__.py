"""The data stage: shards and the images in them, where they live, and the commands that make and
check them (`synth`, `convert`, `validate`). Nothing here imports torch or Ray, so every stage and
the registered model can read data the same way."""
