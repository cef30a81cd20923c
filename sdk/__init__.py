"""TenSafe SDK: the client side. Must not import torch."""
