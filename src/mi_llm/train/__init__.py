"""LoRA supervised fine-tuning (`mi-llm train`), merging and GGUF export (`mi-llm export`),
and the equivalent LLaMA-Factory configuration.

Modules: `config` (the resolved options), `data` (samples -> token ids + labels, batches),
`loss` (logits and loss only where labels exist), `sft` (the accelerate training loop with
checkpoints), `export` (merge + safetensors + GGUF), `gguf` (llama.cpp's converter),
`llamafactory` (YAML for users of that engine).
"""
