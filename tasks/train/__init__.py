"""Train stage: open_clip models (from scratch or LiT from pretrained towers) on Ray Train."""
