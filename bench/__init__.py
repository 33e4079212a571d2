"""megafin's benchmarks: scripts run as `python bench/NAME.py`; what they share imports as `bench.NAME`."""
