"""One 'node' of a datatrove run shared over one folder (test_data_datatrove): prepares the pickled recipe sections
given as argv[1] into argv[2] as data.node_rank=argv[3] of data.nodes=2."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from pathlib import Path

from data_prep.pipeline import prepare

if __name__ == "__main__":
    data, tokenizer = pickle.loads(Path(sys.argv[1]).read_bytes())
    prepare(dataclasses.replace(data, nodes=2, node_rank=int(sys.argv[3])), tokenizer, Path(sys.argv[2]), progress=False)
