"""What differs by platform, kept out of the model and the loops: the host allocator, the einsum of
the weight matmuls, the rollout engine's decoding layout of the weights and what its KV pages hold."""
