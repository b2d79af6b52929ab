"""The Diffusion Policy network: GroupNorm ResNet18 encoder, FiLM-conditioned 1-D U-Net, DDPM/DDIM/DPM-Solver++ sampling."""

from rf_dp_agents.model.diffusion import DiffusionPolicy, make_scheduler
from rf_dp_agents.model.unet import ConditionalUnet1D
from rf_dp_agents.model.vision import ResNet18Encoder, crop_images

__all__ = ["ConditionalUnet1D", "DiffusionPolicy", "ResNet18Encoder", "crop_images", "make_scheduler"]
