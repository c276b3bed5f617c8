"""The command-line programs: Unmixing.py, Diffusion.py, Synthesis.py, Evaluate.py and demo.py are thin shims over these modules."""
