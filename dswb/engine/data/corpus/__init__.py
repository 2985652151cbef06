"""A text corpus turned into tokenized samples on disk: read, clean, dedup, tokenize, chunk, store (see `dswb.engine.data`)."""
