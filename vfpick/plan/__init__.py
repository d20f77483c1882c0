"""PURE planners: no I/O (tests/test_layout.py walks their imports). Inputs are records;
outputs are plans the commands apply."""
