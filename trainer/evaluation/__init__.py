"""What a fine-tune did, seen at every evaluation: generated samples (`samples`), the change against the untouched
base model (`baseline`), the checkpoint that is best without regressing anywhere (`best_checkpoint`), the
per-evaluation bookkeeping that ties them to the Trainer (`rounds`), and lm-evaluation-harness on a result
(`harness`)."""
