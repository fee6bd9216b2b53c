"""Schedule -> artifact pieces: the binary task table, the CUDA source, the cubin."""
