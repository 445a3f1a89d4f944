"""Models a user might write, and some that are wrong in the ways users are."""

import math

import torch
from torch import nn


class SmallBNNet(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear: batch norm to synchronize, dropout to resume exactly."""

    def __init__(self, input_shape, num_classes, width: int = 16, dropout: float = 0.2):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.BatchNorm1d(width),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


def regressor(input_shape, num_outputs, width: int = 16):
    """A factory function rather than a class."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh(), nn.Linear(width, num_outputs))


def wrong_outputs(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 1))


def not_a_module(input_shape):
    return "a model"


class Needs(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.layer = nn.Linear(depth, depth)
