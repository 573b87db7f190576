"""Training pipeline: corpus, tokenizer, target pretraining, drafter training."""
