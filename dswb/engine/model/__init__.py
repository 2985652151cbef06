"""Models: built from a size or a config (`build`), loaded from a directory (`load`: causal LM,
scalar head, vocabulary fit), and where they run (`device`: device choice, autocast)."""
