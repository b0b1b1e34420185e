"""bakegen: generate NVIDIA GPU container-host provisioning (cloud-init, shell, Packer)."""

from __future__ import annotations

__version__ = "0.1.0"
