"""What a model costs: FLOPs per token (`flops`)."""
