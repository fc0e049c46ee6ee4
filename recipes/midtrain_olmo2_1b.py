"""OLMo-2-1B SAM mid-training of [SAM-PT] App B (Table 1) on OLMo-core.

    torchrun --nproc-per-node 8 recipes/midtrain_olmo2_1b.py --optimizer sam \
        --data-mix dolmino50.txt --data-root /data/olmo --out runs/midtrain-1B-sam
    python recipes/midtrain_olmo2_1b.py --optimizer sam --dry-run

The builders live in :mod:`olmo_sam.recipes.midtrain`; ``--help`` lists every flag.
"""

from olmo_sam.recipes.midtrain import main

if __name__ == "__main__":
    main()
