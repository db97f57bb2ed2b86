"""The reinforce stage: a MobileCLIP-style reinforced dataset beside the curated shards."""
