"""Sources of the stand-in NVIDIA container-toolkit packages (not NVIDIA software)."""
