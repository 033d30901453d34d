"""Model resolution, tokenization, scheduling, the model runner and the pipeline that joins them."""
