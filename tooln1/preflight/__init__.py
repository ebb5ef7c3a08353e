"""Compile-only memory checks for accelerator targets, run on any machine before renting one."""
