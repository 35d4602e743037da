"""Train: LoRA SFT and DPO with trl + peft, through one entrypoint per method."""
