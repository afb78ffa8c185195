"""The LoRA fine-tuning core: `python -m workers.lora --config job.json`. Imports no Django."""
