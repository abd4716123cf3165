"""Token ids of open_clip's default tokenizer (the CLIP BPE), which teachers and students share."""
from __future__ import annotations

VOCAB_SIZE = 49408  # rows of the token embedding
SOT_TOKEN = 49406  # <start_of_text>
EOT_TOKEN = 49407  # <end_of_text>: the largest id, so open_clip's argmax pooling finds it
