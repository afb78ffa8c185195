"""The local inference worker: a dedicated process that serves base models with LoRA adapters
over an OpenAI-compatible HTTP API, with vLLM's dynamic LoRA routes. No Django here."""
