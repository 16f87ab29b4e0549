"""Export: from a training output (full model, LoRA or QLoRA adapter) to a standalone model directory.

`delphi export OUTPUT_DIR EXPORT_DIR [--target hf|ipu] [--dtype fp16|bf16|fp32] [--verify]`.
Modules: `source` (what a run directory holds), `merge` (adapters into the base in its original precision),
`check` (fixed prompts, logit comparison), `targets` (the registry: `hf` and `ipu`, each a `target.ExportTarget`),
`card` (model card and the export record), `verify` (the IPU export loaded by the pipeline's own libraries).
"""
