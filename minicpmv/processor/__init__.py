"""Images, videos and chat text into model inputs (never imports torch.nn)."""
