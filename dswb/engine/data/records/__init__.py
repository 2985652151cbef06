"""What a training record is: the built-in task, tokenizers, chat templates and post-training records."""
