"""Controlled pretraining of [SAM-PT] App C.1 (Tables 4, 5, 6) on OLMo-core.

    torchrun --nproc-per-node 8 recipes/pretrain.py --size 60M --tokens 192B \
        --optimizer sam --schedule cosine --data /data/dclm --out runs/60M-192B-sam
    python recipes/pretrain.py --size 150M --tokens-per-param 400 --dry-run

The builders live in :mod:`olmo_sam.recipes.pretrain`; ``--help`` lists every flag.
"""

from olmo_sam.recipes.pretrain import main

if __name__ == "__main__":
    main()
