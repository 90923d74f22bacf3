"""Training mechanics shared by the recipes (recipes/pretrain.py, recipes/sft.py): optimiser and
schedules (`optim`), process groups and DDP/FSDP2 (`distributed`), atomic resumable checkpoints and
export (`checkpoint`), LoRA via PEFT (`lora`), the loop pieces (`loop`) and the CLI (`cli`).

Submodules are imported explicitly (`from minicpmv.train import checkpoint`); `lora` needs PEFT.
"""
