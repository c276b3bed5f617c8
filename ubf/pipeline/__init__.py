"""Stage logic behind the CLIs: training loops, inference, sampling, synthesis."""
