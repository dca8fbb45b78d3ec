"""Model facts: catalog entries, GGUF headers, Hugging Face configs, remote refs and stack.lock."""
