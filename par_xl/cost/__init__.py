"""What a model costs: FLOPs per token (`flops`), trainable parameters (`parameters`)."""
