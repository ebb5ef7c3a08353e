"""Platform-specific tuning (host allocator, CPU layouts) kept out of the model and the loop."""
