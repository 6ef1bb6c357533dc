"""Pure Flax linen models: torchvision-exact ResNets, DCGAN, and the convolution layers they share."""

from tlgan.models.dcgan import Discriminator, Generator
from tlgan.models.resnet import ResNet, ResNet18, ResNet34, ResNet50

__all__ = ["Discriminator", "Generator", "ResNet", "ResNet18", "ResNet34", "ResNet50"]
