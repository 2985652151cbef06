"""The data side of the engine, in three parts.

- `corpus/`: files -> samples on disk: `readers` (text, JSONL, compressed, Parquet, `datasets`
  directories, as resumable blocks; with `sources` (paths, formats), `text_readers`,
  `table_readers` and `blocks` (blocks and their parsing)), `cleaning` (regex rules), `dedup`
  (exact hashes, MinHash/LSH), `chunking` (overlapping windows), `work` (what worker processes
  do), `ingest` and `prepare` (streaming, parallel, resumable preparation; with `progress` (events,
  `progress.json`) and `pool` (workers, lock)), `store`, `store_views`, `store_write` and
  `file_slices` (samples on disk, read with pread), `cache` (cache keys), `report` and `events`
  (the data report and progress events), `pipeline` (`prepare_data`, what pretraining calls).
  See docs/data.md.
- `records/`: what a sample means: the built-in addition `task`, the `tokenizer` (BPE training, the
  task's characters, loading), `chat` templates and loss masks, post-training records (`posttrain`:
  SFT, preference and prompt files).
- `batches/`: samples -> tensors: the padded-token batch planner (`batching`, pure numpy),
  `collate` (padded and packed `Batch`), `loader` (the resumable batch stream and its prefetcher),
  `pairs` (preference pairs).
"""
