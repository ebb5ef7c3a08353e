"""Sampling G responses per prompt on a paged KV cache, and scoring them on the host."""
