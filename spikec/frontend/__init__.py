"""Frontend: load Hugging Face models and capture them as canonical torch.fx graphs."""
