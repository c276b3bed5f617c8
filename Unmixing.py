"""Stage 1 CLI: train the RGB-to-abundance unmixing network, or infer abundances of image folders.

    python Unmixing.py train [-c config/Chikusei_unmixing.json] [--train DIR] [--val DIR] [--test DIR] [--out DIR]
    torchrun --nproc_per_node N Unmixing.py train ...   (DDP: train.batch_size is the global batch)
    python Unmixing.py infer [--ckpt CKPT] [--rgb DIR ...] [--hsi DIR ...] [--out DIR] [--tile N] [--overlap M]
"""
from ubf.cli.unmixing import main

if __name__ == "__main__":
    main()
