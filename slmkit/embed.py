"""`slmkit embed`: a model turns every text of a file into a vector — the last hidden states pooled (by default as
the model was trained to embed, else mean), L2-normalized — written as a .npy matrix or a parquet table.

Texts are read as `slmkit predict` reads records (.txt one per line, .jsonl/.json/.csv/.tsv records with a text
field), each from its start, cut to the model's window; vector i belongs to text i of the file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmkit.atomic import check_writable
from slmkit.errors import SlmkitError
from slmkit.options import at_least, option

FORMATS = (".npy", ".parquet")


@dataclass
class EmbedArgs:
    checkpoint: str = option("", "Run folder or checkpoint of the model that embeds (an encoder, pretrained or contrastively tuned).")
    input: str = option("", "Texts: .txt (one per line) or .jsonl/.json/.csv/.tsv records with a text field.")
    out: str = option("", "Where to write the vectors: .npy (a float32 matrix, one row per text) or .parquet (the records' id and text beside an `embedding` column).")
    text_field: str = option("text", "The record field that holds the text (.jsonl/.json/.csv/.tsv).")
    pooling: str = option("auto", "How one vector stands for a text, by name (mean, first, last); auto = the model's embedding head's, else mean for an encoder and last for a decoder.")
    normalize: bool = option(True, "Scale every vector to unit length, so a dot product is the cosine.")
    batch_size: int = option(32, "Texts per forward pass.", bounds=at_least(1))
    device: str = option("auto", "auto (cuda when available), cpu, cuda or cuda:N.")
    progress_bar: bool = option(True, "Show a progress bar over the texts.")


def read_texts(path: str, field: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The texts of the input file and their records; SlmkitError for an empty file or records without the field."""
    from slmkit.predict import read_inputs

    records = read_inputs(path, "embed")
    texts = [record.get(field) for record in records]
    missing = next((i for i, text in enumerate(texts, 1) if not isinstance(text, str) or not text.strip()), None)
    if missing is not None:
        raise SlmkitError(f"record {missing} of input={path} has no text in `{field}` (it has: "
                          f"{', '.join(sorted(records[missing - 1]))}); set text_field=NAME or drop the record")
    return texts, records


def run_embed(args: EmbedArgs) -> Path:
    """Embeds every text of args.input into args.out; returns the written file."""
    from slmkit.atomic import atomic_path
    from slmkit.checkpoint import load_checkpoint
    from slmkit.eval.embedding import default_pooling, embed_rows, text_rows
    from slmkit.eval.run import device_of
    from slmkit.model import POOLINGS
    from slmkit.tokenizer import end_of_document_id

    if not args.checkpoint or not args.input or not args.out:
        raise SlmkitError("embed needs checkpoint=PATH, input=FILE and out=FILE.npy or out=FILE.parquet")
    out = Path(args.out)
    if out.suffix not in FORMATS:
        raise SlmkitError(f"out={out}: write .npy (a float32 matrix) or .parquet (a table with an embedding column)")
    if args.pooling != "auto" and args.pooling not in POOLINGS:
        raise SlmkitError(f"bad value {args.pooling!r} for pooling{POOLINGS.choices_hint(args.pooling)}; or auto")
    check_writable(out, "out")  # before the work, not after it
    texts, records = read_texts(args.input, args.text_field)
    loaded = load_checkpoint(args.checkpoint, map_location=device_of(args.device))
    model, tokenizer = loaded.model, loaded.tokenizer()
    pooling = default_pooling(model) if args.pooling == "auto" else args.pooling
    prefix = end_of_document_id(tokenizer)
    rows = text_rows(tokenizer, texts, model.config.block_size, prefix)
    bar = _progress(len(rows), args.progress_bar)
    with torch.inference_mode():
        vectors = embed_rows(model, rows, prefix, args.batch_size, pooling, args.normalize, bar.update).numpy()
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors.astype(np.float32))
        else:
            _write_parquet(tmp, vectors, texts, records)
    print(f"{len(texts)} vectors of {vectors.shape[1]} dimensions ({pooling} pooling"
          f"{', normalized' if args.normalize else ''}) written to {out}")
    return out


def _progress(total: int, shown: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="embed", unit="text", disable=not shown, file=sys.stderr)


def _write_parquet(path: Path, vectors: np.ndarray, texts: list[str], records: list[dict[str, Any]]) -> None:
    """id (when every record has one), text and embedding (a fixed-size list of float32) per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, pa.Array] = {}
    if all("id" in record for record in records):
        columns["id"] = pa.array([str(record["id"]) for record in records])
    columns["text"] = pa.array(texts)
    flat = pa.array(vectors.astype(np.float32).reshape(-1))
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    pq.write_table(pa.table(columns), str(path))
