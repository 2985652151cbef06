"""The data of the local lm-eval tasks here: `addition.jsonl` beside this file, as a `test` split.

lm-eval hands `dataset_kwargs.data_files` to `datasets.load_dataset` as given, so a relative path
would resolve against the working directory; `custom_dataset` resolves it against this file instead.
"""

from pathlib import Path


def load(**kwargs):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(Path(__file__).parent / "addition.jsonl")})
