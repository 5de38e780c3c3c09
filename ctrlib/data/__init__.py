"""Data: schema, vocabularies, tensor batches, splits, the simulated CTR world, real-data loaders."""
from ctrlib.data.frames import FrameData, from_files, from_frames
from ctrlib.data.movielens import (ChecksumMismatchError, CorruptDatasetError, DatasetUnavailableError,
                                   MovieLens100K, load_movielens_100k, movielens_summary)
from ctrlib.data.schema import Categorical, Numeric, Schema, Sequence, Timestamp
from ctrlib.data.sequences import build_behaviour_samples, movielens_samples
from ctrlib.data.simulator import CTRWorld, WorldConfig
from ctrlib.data.splits import split_by_time
from ctrlib.data.tensors import TensorData
from ctrlib.data.vocab import PAD, Vocab, encode_columns

__all__ = ["Categorical", "Numeric", "Sequence", "Timestamp", "Schema", "CTRWorld", "WorldConfig", "split_by_time",
           "TensorData", "Vocab", "encode_columns", "PAD", "MovieLens100K", "load_movielens_100k",
           "movielens_summary", "DatasetUnavailableError", "ChecksumMismatchError", "CorruptDatasetError",
           "build_behaviour_samples", "movielens_samples", "FrameData", "from_frames", "from_files"]
