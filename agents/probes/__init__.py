"""Probes that read real hardware: accelerators, power meters, site counters."""
