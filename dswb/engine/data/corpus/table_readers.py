"""Blocks of the columnar formats: Parquet files and Arrow files (`datasets` save_to_disk).

Only the `text_field` column is read, in record batches, with pyarrow (`pip install
'dswb[parquet]'`; `datasets` itself is not needed): `parquet_batches` and `arrow_batches` open a
file (Arrow: the IPC stream format `datasets` writes, else the IPC file format) and check that the
column exists and holds strings; `table_blocks` gathers the column's values into blocks of about
`block_bytes`, resumable at a row number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from dswb.engine.data.corpus.blocks import Block
from dswb.engine.data.corpus.sources import file_size, missing_package
from dswb.errors import UserError


def parquet_batches(path: Path, text_field: str) -> tuple[Iterator, int]:
    """(record batches of the `text_field` column, number of rows) of a Parquet file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise missing_package("pyarrow", "parquet", f"{path} (Parquet)") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise UserError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None
    _check_column(path, pf.schema_arrow, text_field)
    return pf.iter_batches(batch_size=1024, columns=[text_field]), pf.metadata.num_rows


def arrow_batches(path: Path, text_field: str) -> tuple[Iterator, int]:
    """(record batches, -1: the number of rows is not known up front) of an Arrow file."""
    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc
    except ImportError:
        raise missing_package("pyarrow", "parquet", f"{path} (Arrow)") from None
    try:
        source = pa.memory_map(str(path))
        try:
            reader = ipc.open_stream(source)
            batches = iter(reader)
        except pa.ArrowInvalid:
            file_reader = ipc.open_file(pa.memory_map(str(path)))
            reader = file_reader
            batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
    except Exception as exc:
        raise UserError(f"{path}: not a readable Arrow file: {_first_line(exc)}") from None
    _check_column(path, reader.schema, text_field)
    return batches, -1


def _check_column(path: Path, schema, text_field: str) -> None:
    if text_field not in schema.names:
        raise UserError(f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)}); set data.text_field")
    kind = str(schema.field(text_field).type)
    if kind not in ("string", "large_string", "string_view"):
        raise UserError(f"{path}: column '{text_field}' is {kind}, not a string")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def table_blocks(path: Path, index: int, at: dict, block_bytes: int, text_field: str, open_batches) -> Iterator[Block]:
    """Blocks of the `text_field` values of file number `index` from row `at["offset"]`;
    `open_batches` is `parquet_batches` or `arrow_batches`."""
    batches, total_rows = open_batches(path, text_field)
    size = file_size(path)
    skip, row = at["offset"], 0
    values: list = []
    nbytes, first = 0, at["offset"] + 1
    for batch in batches:
        column = batch.column(batch.schema.get_field_index(text_field))
        n = len(column)
        if row + n <= skip:
            row += n
            continue
        if row < skip:
            column, row = column.slice(skip - row), skip
        values.extend(column.to_pylist())
        nbytes += column.nbytes
        row += len(column)
        if nbytes >= block_bytes:
            share = int(size * len(values) / total_rows) if total_rows > 0 else int(nbytes)
            yield Block(str(path), "values", values, first, {"file": index, "offset": row, "line": 1}, share)
            values, nbytes, first = [], 0, row + 1
    share = int(size * len(values) / total_rows) if total_rows > 0 else int(nbytes)
    yield Block(str(path), "values", values, first, {"file": index + 1, "offset": 0, "line": 1}, share)
