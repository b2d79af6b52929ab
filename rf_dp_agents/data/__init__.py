"""The zarr data pipeline: replay buffer (read), writer, sequence sampler, normaliser and training dataset."""

from rf_dp_agents.data.dataset import Batch, SequenceDataset
from rf_dp_agents.data.errors import DatasetError
from rf_dp_agents.data.normalizer import Normalizer
from rf_dp_agents.data.replay_buffer import IMAGE_KEYS, ReplayBuffer, open_zarr_group
from rf_dp_agents.data.sampler import SequenceSampler, episode_masks
from rf_dp_agents.data.writer import ZarrWriter

__all__ = [
    "Batch",
    "DatasetError",
    "IMAGE_KEYS",
    "Normalizer",
    "ReplayBuffer",
    "SequenceDataset",
    "SequenceSampler",
    "ZarrWriter",
    "episode_masks",
    "open_zarr_group",
]
