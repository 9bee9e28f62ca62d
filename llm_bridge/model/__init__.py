"""After training: merge a checkpoint into a model, upload it, generate with it."""
