"""OLMo-2-1B SAM mid-training of [SAM-PT] App B (Table 1) on OLMo-core.

    torchrun --nproc-per-node 8 recipes/midtrain_olmo2_1b.py --optimizer sam \
        --data-mix dolmino50.txt --data-root /data/olmo --out runs/midtrain-1B-sam
    python recipes/midtrain_olmo2_1b.py --optimizer sam --dry-run

The builders live in :mod:`olmo_sam.recipes.midtrain`; ``--help`` lists every flag.
"""

try:
    from olmo_sam.recipes.midtrain import main
except ImportError:  # running from a source checkout without installing
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from olmo_sam.recipes.midtrain import main

if __name__ == "__main__":
    main()
