"""The headless training engine (PyTorch + transformers). Never imports Textual."""
