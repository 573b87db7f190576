"""Training pipeline: corpus, tokenizer, token files (`tokens`), the settings and loop the trainers
share (`config`, `loop`), and the trainers: target pretraining, DFlash drafter, diffusion LM."""
