"""The on-host agent: stdlib-only (python3 >= 3.8), shipped to each host as one zipapp."""
